// Command gpupass-deb builds gpupass's three Debian packages (make deb) with goreleaser's
// nfpm as a library: gpupass (controller, man pages, bash completion), gpupass-host-agent
// (daemon, unit, commented /etc/gpupass/host-agent.yaml conffile, maintainer scripts) and
// gpupass-guest-agent (static binary and unit, for container templates). It stages what
// the packages hold under --stage (binaries from --bin, pages and completion from the
// binaries' own gen-docs, units with /usr/bin paths, changelog and copyright), then packs
// each packaging/deb/<name>.yaml. Run it from the repository root.
package main

import (
	"bytes"
	"compress/gzip"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
)

// packages are the packages built, in order; each has packaging/deb/<name>.yaml.
var packages = []string{"gpupass", "gpupass-host-agent", "gpupass-guest-agent"}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "gpupass-deb:", err)
		os.Exit(1)
	}
}

func run() error {
	describe := flag.String("describe", "", "output of git describe --tags --long --always --dirty --match 'v[0-9]*'")
	commits := flag.Int("commits", 0, "commits in HEAD (git rev-list --count HEAD): orders untagged builds")
	mtime := flag.Int64("mtime", 0, "unix time for the files and the changelog (the commit's time, for reproducible packages)")
	bin := flag.String("bin", "bin", "directory with the built binaries")
	stage := flag.String("stage", "build/deb/stage", "staging directory (emptied first)")
	out := flag.String("out", "build/deb", "where the .deb files go")
	flag.Parse()

	if *mtime <= 0 {
		return errors.New("give --mtime (git log -1 --format=%ct): lintian refuses files dated 1970")
	}
	version, err := DebianVersion(*describe, *commits)
	if err != nil {
		return err
	}
	when := time.Unix(*mtime, 0).UTC()
	if err := os.RemoveAll(*stage); err != nil {
		return fmt.Errorf("empty %s: %w", *stage, err)
	}
	if err := stageFiles(*bin, *stage, version, when); err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return fmt.Errorf("make %s: %w", *out, err)
	}
	// Packages of earlier builds go: build/deb then holds exactly this build's.
	for _, name := range packages {
		old, _ := filepath.Glob(filepath.Join(*out, name+"_*.deb"))
		for _, f := range old {
			if err := os.Remove(f); err != nil {
				return fmt.Errorf("remove %s: %w", f, err)
			}
		}
	}
	env := map[string]string{"VERSION": version, "STAGE": *stage}
	for _, name := range packages {
		path, err := pack(filepath.Join("packaging", "deb", name+".yaml"), env, when, *out)
		if err != nil {
			return err
		}
		fi, err := os.Stat(path)
		if err != nil {
			return err
		}
		fmt.Printf("%s (%d KiB)\n", path, fi.Size()/1024)
	}
	return nil
}

// pack builds one package from its nfpm config and returns the file written.
func pack(config string, env map[string]string, when time.Time, out string) (string, error) {
	cfg, err := nfpm.ParseFileWithEnvMapping(config, func(k string) string { return env[k] })
	if err != nil {
		return "", fmt.Errorf("read %s: %w", config, err)
	}
	info, err := cfg.Get("deb")
	if err != nil {
		return "", fmt.Errorf("read %s: %w", config, err)
	}
	info.MTime = when
	info = nfpm.WithDefaults(info)
	if err := nfpm.Validate(info); err != nil {
		return "", fmt.Errorf("check %s: %w", config, err)
	}
	p, err := nfpm.Get("deb")
	if err != nil {
		return "", err
	}
	path := filepath.Join(out, p.ConventionalFileName(info))
	var buf bytes.Buffer
	if err := p.Package(info, &buf); err != nil {
		return "", fmt.Errorf("pack %s: %w", config, err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return path, nil
}

// stageFiles lays out under stage/<package>/ what each package holds beyond the files
// named directly in its config.
func stageFiles(bin, stage, version string, when time.Time) error {
	for _, name := range packages {
		dir := filepath.Join(stage, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := writeGzip(filepath.Join(dir, "changelog.gz"), changelog(name, version, when)); err != nil {
			return err
		}
	}
	// Man pages and completion come from the binaries themselves (their hidden gen-docs).
	for _, name := range []string{"gpupass", "gpupass-host-agent"} {
		raw := filepath.Join(stage, name, "raw")
		cmd := exec.Command(filepath.Join(bin, name), "gen-docs", "--date", when.Format("2006-01-02"), raw)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("generate the docs of %s: %w: %s", name, err, out)
		}
		pages, err := filepath.Glob(filepath.Join(raw, "man", "*"))
		if err != nil {
			return err
		}
		man := filepath.Join(stage, name, "man")
		if err := os.MkdirAll(man, 0o755); err != nil {
			return err
		}
		for _, p := range pages {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if err := writeGzip(filepath.Join(man, filepath.Base(p)+".gz"), b); err != nil {
				return err
			}
		}
	}
	// The units name /usr/local/bin (make install); the packages install to /usr/bin.
	// The guest package also carries the readiness gate (gpupass-gpu-ready.service and
	// gpu-ready.target) for app units to order after.
	for _, u := range []struct{ pkg, file string }{
		{"gpupass-host-agent", "gpupass-host-agent.service"},
		{"gpupass-guest-agent", "gpupass-guest-agent.service"},
		{"gpupass-guest-agent", "gpupass-gpu-ready.service"},
		{"gpupass-guest-agent", "gpu-ready.target"},
	} {
		b, err := os.ReadFile(filepath.Join("packaging", u.file))
		if err != nil {
			return fmt.Errorf("read the unit: %w", err)
		}
		b = bytes.ReplaceAll(b, []byte("/usr/local/bin/"), []byte("/usr/bin/"))
		if err := os.WriteFile(filepath.Join(stage, u.pkg, u.file), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// changelog is a native package's one-entry Debian changelog for version.
func changelog(name, version string, when time.Time) []byte {
	return fmt.Appendf(nil, "%s (%s) unstable; urgency=medium\n\n  * Built from the gpupass repository (git describe; see its history).\n\n -- gpupass maintainers <gpupass@users.noreply.github.com>  %s\n",
		name, version, when.Format("Mon, 02 Jan 2006 15:04:05 -0700"))
}

// writeGzip writes b gzip-compressed at the best level, without a name or a time in the
// header (reproducible, as lintian wants: gzip -9n).
func writeGzip(path string, b []byte) error {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return err
	}
	if _, err := zw.Write(b); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// DebianVersion maps git describe output (--tags --long --always --dirty, tags v<semver>)
// to a Debian version that sorts as the history does:
//
//	v1.2.3-0-gabc1234        1.2.3
//	v1.2.3-4-gabc1234        1.2.3+git4.gabc1234       (after the release)
//	v1.2.3-rc1-0-gabc1234    1.2.3~rc1                 (before the release)
//	abc1234 (no tag yet)     0~git<commits>.gabc1234   (before any release)
//	...-dirty                ...+dirty / .dirty        (a build from a changed tree)
func DebianVersion(describe string, commits int) (string, error) {
	d := strings.TrimSpace(describe)
	if d == "" {
		return "", errors.New("map the version: --describe is empty (run git describe --tags --long --always --dirty)")
	}
	dirty := strings.HasSuffix(d, "-dirty")
	d = strings.TrimSuffix(d, "-dirty")
	var v string
	parts := strings.Split(d, "-")
	if len(parts) >= 3 && strings.HasPrefix(parts[0], "v") && strings.HasPrefix(parts[len(parts)-1], "g") {
		hash := parts[len(parts)-1]
		n, err := strconv.Atoi(parts[len(parts)-2])
		if err != nil {
			return "", fmt.Errorf("map the version: %q: %q is not a commit count", describe, parts[len(parts)-2])
		}
		v = strings.TrimPrefix(parts[0], "v")
		if pre := strings.Join(parts[1:len(parts)-2], "."); pre != "" {
			v += "~" + pre
		}
		if n > 0 {
			v += fmt.Sprintf("+git%d.%s", n, hash)
		}
	} else if len(parts) == 1 && isHex(d) {
		if commits <= 0 {
			return "", fmt.Errorf("map the version: %q has no tag: give --commits (git rev-list --count HEAD)", describe)
		}
		v = fmt.Sprintf("0~git%d.g%s", commits, d)
	} else {
		return "", fmt.Errorf("map the version: %q is not git describe --tags --long output of a v<version> tag", describe)
	}
	if dirty {
		if strings.Contains(v, "+") {
			v += ".dirty"
		} else {
			v += "+dirty"
		}
	}
	if !validDebianVersion(v) {
		return "", fmt.Errorf("map the version: %q gives %q, not a valid Debian version: tag releases v<digits>[.<digits>...]", describe, v)
	}
	return v, nil
}

func isHex(s string) bool {
	for _, r := range s {
		if !strings.ContainsRune("0123456789abcdef", r) {
			return false
		}
	}
	return s != ""
}

// validDebianVersion: a native version (deb-version(7): no epoch, no revision) starts
// with a digit and holds only alphanumerics and . + ~.
func validDebianVersion(v string) bool {
	if v == "" || v[0] < '0' || v[0] > '9' {
		return false
	}
	for _, r := range v {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || strings.ContainsRune(".+~", r)) {
			return false
		}
	}
	return true
}
