package pvelab

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// File is one file to put into a template's rootfs.
type File struct {
	// Source is a host file to copy; Content is used when Source is empty.
	Source  string
	Content string
	Mode    os.FileMode
}

// TemplateSpec is a busybox template with extra files.
type TemplateSpec struct {
	// Name becomes part of the file name: gpupass-<name>-<content hash>.tar.gz.
	Name string
	// Files maps rootfs paths ("usr/local/bin/gpupass-guest-agent") to their content.
	Files map[string]File
	// Inittab lines are added to busybox's /etc/inittab ("::respawn:/usr/local/bin/x").
	Inittab []string
}

// Template builds (once per content) a busybox template in TemplateDir and returns its file
// name, for Spec.Template. The rootfs is the one setup.sh's base template has plus spec's
// files and inittab lines; the name carries a hash of all of it, so a template is rebuilt
// exactly when something in it changed. A build removes the older templates of the same
// name (PruneTemplates: the newest three and those used in the last hour stay).
func Template(t testing.TB, spec TemplateSpec) string {
	t.Helper()
	bb := "/bin/busybox"
	h := sha256.New()
	for _, p := range append([]string{bb}, sources(spec)...) {
		f, err := os.Open(p)
		if err != nil {
			t.Fatalf("pvelab: template %s: %v", spec.Name, err)
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			t.Fatalf("pvelab: template %s: %v", spec.Name, err)
		}
	}
	paths := make([]string, 0, len(spec.Files))
	for p := range spec.Files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		f := spec.Files[p]
		fmt.Fprintf(h, "%s\x00%s\x00%o\x00%s\x00", p, f.Source, f.Mode, f.Content)
	}
	fmt.Fprintf(h, "%q", spec.Inittab)
	prefix, suffix := "gpupass-"+spec.Name+"-", ".tar.gz"
	name := prefix + hex.EncodeToString(h.Sum(nil))[:12] + suffix
	dst := filepath.Join(TemplateDir, name)
	if _, err := os.Stat(dst); err == nil {
		usedTemplate(t, dst)
		return name
	}
	root := t.TempDir()
	if err := buildRootfs(root, bb, spec); err != nil {
		t.Fatalf("pvelab: build template %s: %v", spec.Name, err)
	}
	tmp := dst + fmt.Sprintf(".tmp%d", os.Getpid())
	if out, err := exec.Command("tar", "--numeric-owner", "-czf", tmp, "-C", root, ".").CombinedOutput(); err != nil {
		t.Fatalf("pvelab: tar template %s: %v: %s", spec.Name, err, out)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatalf("pvelab: install template %s: %v", spec.Name, err)
	}
	t.Logf("pvelab: built template %s", dst)
	pruneTemplates(t, prefix, suffix, name)
	return name
}

// usedTemplate marks the template at dst used now: its modification time is what
// PruneTemplates keeps the recently used by.
func usedTemplate(t testing.TB, dst string) {
	t.Helper()
	now := time.Now()
	if err := os.Chtimes(dst, now, now); err != nil {
		t.Logf("pvelab: mark template used (pruning may take it sooner): %v", err)
	}
}

// pruneTemplates removes the older templates of a family in TemplateDir after a build of
// current. Failing to is no failure of the test: it is said, for removing them by hand.
func pruneTemplates(t testing.TB, prefix, suffix, current string) {
	t.Helper()
	removed, err := PruneTemplates(TemplateDir, prefix, suffix, current, time.Now())
	for _, p := range removed {
		t.Logf("pvelab: removed old template %s", p)
	}
	if err != nil {
		t.Logf("%v (remove old %s*%s files there by hand)", err, prefix, suffix)
	}
}

func sources(spec TemplateSpec) []string {
	var out []string
	for _, f := range spec.Files {
		if f.Source != "" {
			out = append(out, f.Source)
		}
	}
	sort.Strings(out)
	return out
}

// buildRootfs makes the busybox rootfs of setup.sh's base template, plus spec.
func buildRootfs(root, bb string, spec TemplateSpec) error {
	for _, d := range []string{"bin", "sbin", "etc", "dev", "proc", "sys", "tmp", "root", "run", "var/log", "usr/bin", "usr/sbin", "usr/local/bin"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	if err := copyFile(bb, filepath.Join(root, "bin/busybox"), 0o755); err != nil {
		return err
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return fmt.Errorf("list busybox applets: %w", err)
	}
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" {
			if err := os.Symlink("/bin/busybox", filepath.Join(root, "bin", a)); err != nil && !os.IsExist(err) {
				return err
			}
		}
	}
	_ = os.Remove(filepath.Join(root, "sbin/init"))
	if err := os.Symlink("/bin/busybox", filepath.Join(root, "sbin/init")); err != nil {
		return err
	}
	inittab := "::sysinit:/etc/rc\n::respawn:/bin/sleep 100000\n::ctrlaltdel:/bin/reboot\n::shutdown:/bin/sync\n::restart:/sbin/init\n"
	for _, l := range spec.Inittab {
		inittab += l + "\n"
	}
	files := map[string]File{
		"etc/inittab": {Content: inittab, Mode: 0o644},
		"etc/rc":      {Content: "#!/bin/sh\nmount -t proc proc /proc 2>/dev/null\nhostname > /run/ct-up\n", Mode: 0o755},
		"etc/passwd":  {Content: "root:x:0:0:root:/root:/bin/sh\n", Mode: 0o644},
		"etc/group":   {Content: "root:x:0:\n", Mode: 0o644},
		// For PVE's "debian" ostype (Spec.OSType).
		"etc/debian_version": {Content: "12.0\n", Mode: 0o644},
	}
	for p, f := range spec.Files {
		files[p] = f
	}
	for p, f := range files {
		dst := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
		}
		if f.Source != "" {
			if err := copyFile(f.Source, dst, mode); err != nil {
				return err
			}
		} else if err := os.WriteFile(dst, []byte(f.Content), mode); err != nil {
			return err
		}
		if err := os.Chmod(dst, mode); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	_ = os.Remove(dst)
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
