// Package hostconfig reads /etc/gpupass/host-agent.yaml, the host agent's configuration:
// strictly decoded, versioned, with every default set in one place (Default).
package hostconfig

import (
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"time"

	"gpupass/internal/inputlimit"
	"gpupass/internal/strictyaml"
)

// Version is the host-agent.yaml format version this package reads.
const Version = 1

// DefaultPath is where the host agent looks for its configuration.
const DefaultPath = "/etc/gpupass/host-agent.yaml"

// Runtimes the host agent can drive.
const (
	RuntimePct = "pct"
	RuntimeLXC = "lxc"
)

// Config is the host agent's configuration.
type Config struct {
	Version        int    `yaml:"version"`
	Listen         string `yaml:"listen"`  // host:port of the controller-facing TLS listener
	Runtime        string `yaml:"runtime"` // pct | lxc
	TLS            TLS    `yaml:"tls"`
	StateDir       string `yaml:"state_dir"`        // journal and backups
	GuestSocketDir string `yaml:"guest_socket_dir"` // one socket directory per container below it
	HostRoot       string `yaml:"host_root"`        // prefix for /proc, /dev, /etc/pve, /var/lib/lxc
	MetricsListen  string `yaml:"metrics_listen"`   // host:port for Prometheus metrics; "" = off
	// Heartbeat is how often guests push a report when nothing changes.
	Heartbeat time.Duration `yaml:"heartbeat"`
	// GuestStaleAfter: a guest whose last report is older counts as not reporting.
	GuestStaleAfter time.Duration `yaml:"guest_stale_after"`
	LXCPath         string        `yaml:"lxc_path"`  // the lxc runtime's container directory; default <host_root>/var/lib/lxc
	Simulated       bool          `yaml:"simulated"` // label the host as a simulated GPU host
	// AllowedControllers, when not empty, pins the controller certificates served (by common
	// name); every one must also have the controller role.
	AllowedControllers []string `yaml:"allowed_controllers"`

	// JournalKeep and JournalKeepFor bound the journal of finished applies and the config
	// backups: per container, a record goes only when it is not among the last
	// JournalKeep and is older than JournalKeepFor.
	JournalKeep    int           `yaml:"journal_keep"`
	JournalKeepFor time.Duration `yaml:"journal_keep_for"`
	File           string        `yaml:"-"` // the file it was read from ("" for defaults)
}

// TLS names the host agent's certificate files.
type TLS struct {
	CA   string `yaml:"ca"`
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Defaults of the journal bounds: the last 20 applies of each container, and every one
// of the last 30 days.
const (
	DefaultJournalKeep    = 20
	DefaultJournalKeepFor = 30 * 24 * time.Hour
)

// Default returns the configuration used for every field a file leaves out.
func Default() *Config {
	return &Config{
		Version:         Version,
		Listen:          "0.0.0.0:7420",
		Runtime:         RuntimePct,
		TLS:             TLS{CA: "/etc/gpupass/ca.crt", Cert: "/etc/gpupass/host.crt", Key: "/etc/gpupass/host.key"},
		StateDir:        "/var/lib/gpupass",
		GuestSocketDir:  "/run/gpupass/guests",
		HostRoot:        "/",
		MetricsListen:   "",
		Heartbeat:       10 * time.Second,
		GuestStaleAfter: 30 * time.Second,
		LXCPath:         "/var/lib/lxc",
		Simulated:       false,
		JournalKeep:     DefaultJournalKeep,
		JournalKeepFor:  DefaultJournalKeepFor,
	}
}

// Load reads and validates the configuration file at path.
func Load(path string) (*Config, error) {
	b, err := inputlimit.ReadFile(path, inputlimit.HostConfigFile)
	if err != nil {
		return nil, fmt.Errorf("load host agent config: %w", err)
	}
	return Parse(path, b)
}

// Parse decodes and validates host-agent.yaml contents (file names it in errors); fields
// the file leaves out keep their Default values.
func Parse(file string, data []byte) (*Config, error) {
	c := Default()
	c.LXCPath = "" // set below from host_root unless the file names it
	doc, err := strictyaml.Decode(file, data, Version, c)
	if err != nil {
		return nil, err
	}
	if c.LXCPath == "" {
		c.LXCPath = filepath.Join(c.HostRoot, "var/lib/lxc")
	}
	c.File = file
	if err := c.validate(doc); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Config) validate(doc *strictyaml.Doc) error {
	if err := checkHostPort(c.Listen); err != nil {
		return doc.Errorf("listen", "%v", err)
	}
	if c.MetricsListen != "" {
		if err := checkHostPort(c.MetricsListen); err != nil {
			return doc.Errorf("metrics_listen", "%v", err)
		}
	}
	switch c.Runtime {
	case RuntimePct, RuntimeLXC:
	default:
		return doc.Errorf("runtime", "%q: use pct (Proxmox) or lxc (plain LXC)", c.Runtime)
	}
	for _, f := range []struct{ path, val string }{
		{"tls.ca", c.TLS.CA}, {"tls.cert", c.TLS.Cert}, {"tls.key", c.TLS.Key},
		{"state_dir", c.StateDir}, {"guest_socket_dir", c.GuestSocketDir},
		{"host_root", c.HostRoot}, {"lxc_path", c.LXCPath},
	} {
		if f.val == "" {
			return doc.Errorf(f.path, "must not be empty")
		}
		if !filepath.IsAbs(f.val) {
			return doc.Errorf(f.path, "%q: use an absolute path", f.val)
		}
	}
	for i, n := range c.AllowedControllers {
		if !controllerNameRE.MatchString(n) {
			return doc.Errorf(fmt.Sprintf("allowed_controllers[%d]", i), "%q is not a certificate name (the --name given to gpupass pki issue --role controller)", n)
		}
	}
	if c.Heartbeat < 100*time.Millisecond || c.Heartbeat > time.Hour {
		return doc.Errorf("heartbeat", "%s: use a duration between 100ms and 1h", c.Heartbeat)
	}
	if c.JournalKeep < 1 || c.JournalKeep > 100000 {
		return doc.Errorf("journal_keep", "%d: keep between 1 and 100000 finished applies per container (default %d)", c.JournalKeep, DefaultJournalKeep)
	}
	if c.JournalKeepFor < 0 || c.JournalKeepFor > 10*365*24*time.Hour {
		return doc.Errorf("journal_keep_for", "%s: use a duration between 0s (count only) and 87600h (default %s)", c.JournalKeepFor, DefaultJournalKeepFor)
	}
	if c.GuestStaleAfter <= c.Heartbeat {
		return doc.Errorf("guest_stale_after", "%s must be longer than heartbeat (%s), e.g. three heartbeats", c.GuestStaleAfter, c.Heartbeat)
	}
	return nil
}

// controllerNameRE is pki's certificate name rule.
var controllerNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

func checkHostPort(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port (e.g. \"0.0.0.0:7420\")", s)
	}
	var n int
	if _, err := fmt.Sscanf(port, "%d", &n); err != nil || n < 0 || n > 65535 || fmt.Sprint(n) != port {
		return fmt.Errorf("%q: port %q is not a number 0-65535", s, port)
	}
	return nil
}
