package guest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// ErrNoVersion means a driver version file or library name holds no NVIDIA version.
var ErrNoVersion = errors.New("no NVIDIA driver version found")

// versionRE matches an NVIDIA driver version: 535.104.05, 580.159.04, 418.87.
var versionRE = regexp.MustCompile(`^[0-9]{2,4}\.[0-9]{1,4}(\.[0-9]{1,4})?$`)

// ParseKernelVersion reads the kernel module's version from the contents of
// /proc/driver/nvidia/version, whose first line looks like
//
//	NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (...)
//	NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023
func ParseKernelVersion(b []byte) (string, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 512), 64<<10)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, "NVRM version:")
		if !ok {
			continue
		}
		for _, f := range strings.Fields(rest) {
			if versionRE.MatchString(f) {
				return f, nil
			}
		}
		return "", fmt.Errorf("parse %q: %w", strings.TrimSpace(line), ErrNoVersion)
	}
	return "", fmt.Errorf("no \"NVRM version:\" line: %w", ErrNoVersion)
}

// maxSmallFile caps what the checks read of /proc files.
const maxSmallFile = 64 << 10

// KernelVersion reads the loaded kernel module's version from /proc/driver/nvidia/version.
// An error wrapping fs.ErrNotExist means the driver is not loaded (or /proc hides it).
func (p Paths) KernelVersion() (string, error) {
	p = p.withDefaults()
	b, err := readLimited(p.host(p.Proc+"/driver/nvidia/version"), maxSmallFile)
	if err != nil {
		return "", err
	}
	return ParseKernelVersion(b)
}
