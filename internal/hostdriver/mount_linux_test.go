package hostdriver

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestProvideConfig: what the hook does at a vendor file's path in the container's root,
// for everything but the container's own regular file (a bind over it, which needs root:
// TestHookInRealContainers). Nothing there: a link to the copy in ContainerDir/conf (its
// directories created); the link of an earlier start: kept; a directory, the container's
// own link leading nowhere, or leading to a host path outside its root: left as they are,
// with the reason.
func TestProvideConfig(t *testing.T) {
	const p = "/usr/share/vulkan/icd.d/nvidia_icd.json"
	f := File{Name: filepath.Base(p), Path: p}
	ours := ContainerDir + "/conf" + p
	link := func(target string) func(t *testing.T, at string) {
		return func(t *testing.T, at string) {
			if err := os.MkdirAll(filepath.Dir(at), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, at); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, tc := range []struct {
		name     string
		setup    func(t *testing.T, at string)
		errHas   string
		wantLink string // the link at p afterwards ("" for none)
	}{
		{name: "nothing there: a link to the copy", wantLink: ours},
		{name: "the link of an earlier start: kept", setup: link(ours), wantLink: ours},
		{name: "a directory: left as it is", setup: func(t *testing.T, at string) {
			if err := os.MkdirAll(at, 0o755); err != nil {
				t.Fatal(err)
			}
		}, errHas: "the container's own " + p + " is not a regular file: left as it is"},
		{name: "the container's own link leading nowhere: left as it is", setup: link("../../nvidia/current/nvidia_icd.json"), errHas: "the container's own " + p + " leads nowhere inside its root", wantLink: "../../nvidia/current/nvidia_icd.json"},
		{name: "the container's own link to a host path: resolved inside its root, left as it is", setup: link("/etc/passwd"), errHas: "leads nowhere inside its root", wantLink: "/etc/passwd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			at := filepath.Join(root, p)
			if tc.setup != nil {
				tc.setup(t, at)
			}
			rootfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(rootfd)
			err = provideConfig(rootfd, t.TempDir(), f)
			if tc.errHas == "" && err != nil || tc.errHas != "" && (err == nil || !strings.Contains(err.Error(), tc.errHas)) {
				t.Fatalf("provideConfig: %v, want an error containing %q", err, tc.errHas)
			}
			got, _ := os.Readlink(at)
			if got != tc.wantLink {
				t.Errorf("link at %s: %q, want %q", p, got, tc.wantLink)
			}
		})
	}
}
