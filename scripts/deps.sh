#!/usr/bin/env bash
# Installs what the demo or the tests need, idempotently. Safe to re-run.
#
#   scripts/deps.sh demo    what scripts/demo.sh needs: LXC, busybox-static, make, git
#                           (no Go tools, no protoc, no subordinate ids: the demo container
#                           is privileged)
#   scripts/deps.sh [test]  all of the above, and what lint, the protobuf drift check and
#                           the tests need: protoc, iproute2, rsync, systemd's unit verifier,
#                           lintian (the .deb packages), prometheus (promtool: alert rules),
#                           uidmap, the pinned Go tools (protoc-gen-go, staticcheck, deadcode), and
#                           root:100000:65536 in /etc/subuid and /etc/subgid (unprivileged
#                           test containers)
set -euo pipefail

PROTOC_GEN_GO_VERSION=v1.36.12
STATICCHECK_VERSION=v0.8.2
DEADCODE_VERSION=v0.52.0 # golang.org/x/tools
DEMO_PKGS=(lxc busybox-static make git ca-certificates)
TEST_PKGS=(lxc-templates uidmap protobuf-compiler iproute2 rsync systemd lintian prometheus)

what=${1:-test}
case $what in
  demo) PKGS=("${DEMO_PKGS[@]}") ;;
  test) PKGS=("${DEMO_PKGS[@]}" "${TEST_PKGS[@]}") ;;
  *) echo "usage: scripts/deps.sh [demo|test]" >&2; exit 2 ;;
esac

export PATH=/usr/local/go/bin:$HOME/go/bin:$PATH
if ! command -v go >/dev/null 2>&1; then
  echo "deps: Go is not installed: install Go 1.26 to /usr/local/go (https://go.dev/doc/install), then re-run" >&2
  exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing Debian packages ${missing[*]}: run as root (or install them) and re-run" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq </dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
fi
[ "$what" = test ] || exit 0

GOBIN=$(go env GOPATH)/bin
if [ "$("$GOBIN/protoc-gen-go" --version 2>/dev/null)" != "protoc-gen-go $PROTOC_GEN_GO_VERSION" ]; then
  echo "deps: go install protoc-gen-go@$PROTOC_GEN_GO_VERSION"
  go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
fi
if ! "$GOBIN/staticcheck" -version 2>/dev/null | grep -q "${STATICCHECK_VERSION#v}"; then
  echo "deps: go install staticcheck@$STATICCHECK_VERSION"
  go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"
fi
if ! go version -m "$GOBIN/deadcode" 2>/dev/null | grep -q "golang.org/x/tools[[:space:]]*$DEADCODE_VERSION"; then
  echo "deps: go install deadcode@$DEADCODE_VERSION"
  go install "golang.org/x/tools/cmd/deadcode@$DEADCODE_VERSION"
fi

# Unprivileged test containers need subordinate ids for root.
for f in /etc/subuid /etc/subgid; do
  if [ "$(id -u)" -eq 0 ] && ! grep -q '^root:100000:65536$' "$f" 2>/dev/null; then
    echo 'root:100000:65536' >> "$f"
  fi
done
