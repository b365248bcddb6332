package pvelab

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gpupass/internal/lxctest"
)

// SystemdTemplate makes (once per content) gpupass-bookworm-systemd-<hash>.tar.zst in
// TemplateDir: the Debian 12 systemd rootfs the suite also boots under plain LXC
// (test/rootfs/debian.sh, lxctest.RootfsTarball) with the guest agent baked in as
// docs/guest-agent.md says: agent at /usr/local/bin/gpupass-guest-agent, unit in
// /etc/systemd/system, enabled by a symlink in multi-user.target.wants. It returns the file
// name, for Spec.Template; a build removes the templates of earlier contents (45 MB each;
// PruneTemplates: the newest three and those used in the last hour stay).
func SystemdTemplate(t testing.TB, agent, unit string) string {
	t.Helper()
	base := lxctest.RootfsTarball(t, lxctest.KindSystemd)
	h := sha256.New()
	for _, p := range []string{base, agent, unit} {
		f, err := os.Open(p)
		if err != nil {
			t.Fatalf("pvelab: systemd template: %v", err)
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			t.Fatalf("pvelab: systemd template: %v", err)
		}
	}
	prefix, suffix := "gpupass-bookworm-systemd-", ".tar.zst"
	name := prefix + hex.EncodeToString(h.Sum(nil))[:12] + suffix
	dst := filepath.Join(TemplateDir, name)
	if _, err := os.Stat(dst); err == nil {
		usedTemplate(t, dst)
		return name
	}
	began := time.Now()
	root := filepath.Join(t.TempDir(), "rootfs")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(argv ...string) {
		t.Helper()
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("pvelab: systemd template: %s: %v\n%s", strings.Join(argv, " "), err, out)
		}
	}
	run("tar", "--numeric-owner", "--xattrs", "-I", "zstd", "-xpf", base, "-C", root)
	run("install", "-m", "0755", agent, filepath.Join(root, "usr/local/bin/gpupass-guest-agent"))
	run("install", "-m", "0644", unit, filepath.Join(root, "etc/systemd/system/gpupass-guest-agent.service"))
	wants := filepath.Join(root, "etc/systemd/system/multi-user.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../gpupass-guest-agent.service", filepath.Join(wants, "gpupass-guest-agent.service")); err != nil {
		t.Fatal(err)
	}
	tmp := dst + fmt.Sprintf(".tmp%d", os.Getpid())
	run("tar", "--numeric-owner", "--xattrs", "-I", "zstd -T0 -3", "-cf", tmp, "-C", root, ".")
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatalf("pvelab: install template: %v", err)
	}
	t.Logf("pvelab: built template %s in %v", dst, time.Since(began).Round(time.Millisecond))
	pruneTemplates(t, prefix, suffix, name)
	return name
}
