// Package devrule is the typed form of a cgroup device rule as LXC writes it in
// lxc.cgroup2.devices.allow / lxc.cgroup.devices.allow: "c 195:* rwm", "b 8:0 r", "a".
//
// Parse accepts the kernel/LXC syntax (type, optional MAJ:MIN with '*' wildcards, access
// set) and String prints the canonical form, so String(Parse(s)) == s for canonical input:
// single spaces, "a" alone for "everything" (Parse also accepts "a *:* rwm", printed "a").
package devrule

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Wildcard stands for '*' in a major or minor number.
const Wildcard int64 = -1

// maxNumber is the largest device number the kernel accepts (dev_t is 12 bits of major
// and 20 bits of minor, but the cgroup parser takes any u32).
const maxNumber = 1<<32 - 1

// ErrInvalid is wrapped by every parse and validation error.
var ErrInvalid = errors.New("invalid device rule")

// Rule is one device cgroup rule.
type Rule struct {
	// Type is 'a' (all devices), 'b' (block) or 'c' (char).
	Type rune
	// Major and Minor are device numbers, or Wildcard.
	Major, Minor int64
	// Access is a non-empty set of 'r', 'w', 'm' without repeats, in the order written.
	Access string
}

// Char returns the rule allowing access to char device major:minor.
func Char(major, minor uint32, access string) Rule {
	return Rule{Type: 'c', Major: int64(major), Minor: int64(minor), Access: access}
}

// Parse parses a rule such as "c 195:* rwm". Surrounding whitespace is ignored.
func Parse(s string) (Rule, error) {
	f := strings.Fields(s)
	if len(f) == 0 {
		return Rule{}, fmt.Errorf("parse device rule %q: empty: %w", s, ErrInvalid)
	}
	if len(f[0]) != 1 {
		return Rule{}, fmt.Errorf("parse device rule %q: type %q is not one of a, b, c: %w", s, f[0], ErrInvalid)
	}
	r := Rule{Type: rune(f[0][0]), Major: Wildcard, Minor: Wildcard, Access: "rwm"}
	switch r.Type {
	case 'a':
		if len(f) == 1 {
			return r, nil
		}
	case 'b', 'c':
	default:
		return Rule{}, fmt.Errorf("parse device rule %q: type %q is not one of a, b, c: %w", s, f[0], ErrInvalid)
	}
	if len(f) != 3 {
		return Rule{}, fmt.Errorf("parse device rule %q: want \"TYPE MAJOR:MINOR ACCESS\": %w", s, ErrInvalid)
	}
	maj, min, ok := strings.Cut(f[1], ":")
	if !ok {
		return Rule{}, fmt.Errorf("parse device rule %q: %q is not MAJOR:MINOR: %w", s, f[1], ErrInvalid)
	}
	var err error
	if r.Major, err = parseNumber(maj); err != nil {
		return Rule{}, fmt.Errorf("parse device rule %q: major: %w", s, err)
	}
	if r.Minor, err = parseNumber(min); err != nil {
		return Rule{}, fmt.Errorf("parse device rule %q: minor: %w", s, err)
	}
	r.Access = f[2]
	if err := r.Validate(); err != nil {
		return Rule{}, fmt.Errorf("parse device rule %q: %w", s, err)
	}
	return r, nil
}

func parseNumber(s string) (int64, error) {
	if s == "*" {
		return Wildcard, nil
	}
	// Canonical decimal only: no sign, no leading zeros (they would not round-trip).
	if s == "" || s[0] == '+' || s[0] == '-' || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("%q is not a decimal number or '*': %w", s, ErrInvalid)
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%q is not a decimal number or '*': %w", s, ErrInvalid)
	}
	return int64(n), nil
}

// Validate checks the type, the numbers and the access set.
func (r Rule) Validate() error {
	switch r.Type {
	case 'a', 'b', 'c':
	default:
		return fmt.Errorf("type %q is not one of a, b, c: %w", r.Type, ErrInvalid)
	}
	for _, n := range []int64{r.Major, r.Minor} {
		if n != Wildcard && (n < 0 || n > maxNumber) {
			return fmt.Errorf("device number %d out of range: %w", n, ErrInvalid)
		}
	}
	if r.Access == "" {
		return fmt.Errorf("empty access set (want some of r, w, m): %w", ErrInvalid)
	}
	seen := map[rune]bool{}
	for _, c := range r.Access {
		if c != 'r' && c != 'w' && c != 'm' {
			return fmt.Errorf("access %q: %q is not one of r, w, m: %w", r.Access, c, ErrInvalid)
		}
		if seen[c] {
			return fmt.Errorf("access %q: %q repeated: %w", r.Access, c, ErrInvalid)
		}
		seen[c] = true
	}
	return nil
}

// String prints the canonical form: "a" for all devices with full access, else
// "TYPE MAJOR:MINOR ACCESS" with '*' for wildcards.
func (r Rule) String() string {
	if r.Type == 'a' && r.Major == Wildcard && r.Minor == Wildcard && r.Access == "rwm" {
		return "a"
	}
	return string(r.Type) + " " + number(r.Major) + ":" + number(r.Minor) + " " + r.Access
}

func number(n int64) string {
	if n == Wildcard {
		return "*"
	}
	return strconv.FormatInt(n, 10)
}
