// Package fleet reads fleet.yaml, the controller's declaration of which container on which
// host gets which GPUs, and converts the bash orchestrator's phoenix_lxc_configs.json into it.
package fleet

import (
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strings"

	"gpupass/internal/inputlimit"
	"gpupass/internal/strictyaml"
	pb "gpupass/proto/gpupass/v1"
)

// Version is the fleet.yaml format version this package reads.
const Version = 1

// DefaultPort is the host agent's port when an address names none.
const DefaultPort = "7420"

// Styles and states a container entry may ask for.
const (
	StyleRaw     = "raw"
	StyleDev     = "dev"
	StateRunning = "running"
	// DriverOwn and DriverHost are the values of a container's driver key.
	DriverOwn  = "own"
	DriverHost = "host"
)

// Fleet is a loaded, validated fleet.yaml.
type Fleet struct {
	Version    int         `yaml:"version"`
	TLS        TLS         `yaml:"tls"`
	Hosts      []Host      `yaml:"hosts"`
	Containers []Container `yaml:"containers"`

	File string `yaml:"-"` // the file it was read from ("" when parsed from memory)
}

// TLS names the controller's certificate files. After Load they are absolute or relative
// to the working directory (paths in the file are relative to the file's directory).
type TLS struct {
	CA   string `yaml:"ca"`
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Host is one host agent.
type Host struct {
	Name    string `yaml:"name"`
	Address string `yaml:"address"` // host:port; the port defaults to 7420
	// ServerName is the name the host's certificate must carry (default: the host part of
	// Address).
	ServerName string `yaml:"server_name"`
}

// Container is one container entry.
type Container struct {
	Host           string   `yaml:"host"`
	ID             string   `yaml:"id"`
	GPUs           []string `yaml:"gpus"`  // index, UUID or PCI bus id; empty = none
	Style          string   `yaml:"style"` // raw (default) | dev
	RequireNetwork bool     `yaml:"require_network"`
	State          string   `yaml:"state"` // "" (leave as is) | running
	// MIGCaps passes the MIG capability nodes (/dev/nvidia-caps/*: MIG config and monitor)
	// too. Whole GPUs get none unless asked: they let a container reconfigure or watch MIG.
	MIGCaps bool `yaml:"mig_caps"`
	// Driver is where the container's NVIDIA userspace comes from: own (default: the
	// template brings it) or host (the host's userspace of the loaded kernel module is
	// bound in at every start; docs/driver.md).
	Driver string `yaml:"driver"`
}

// Key is "host/id", how the CLI names a container.
func (c Container) Key() string { return c.Host + "/" + c.ID }

// Spec is the container entry as the host agent's wire request wants it.
func (c Container) Spec() *pb.ContainerSpec {
	style := pb.Style_STYLE_RAW
	if c.Style == StyleDev {
		style = pb.Style_STYLE_DEV
	}
	gpus := make([]string, len(c.GPUs))
	copy(gpus, c.GPUs)
	spec := &pb.ContainerSpec{Id: c.ID, Gpus: gpus, Style: style, RequireNetwork: c.RequireNetwork, WantState: c.State, MigCaps: c.MIGCaps}
	if c.Driver == DriverHost {
		spec.Driver = DriverHost
	}
	return spec
}

// Load reads and validates a fleet file.
func Load(path string) (*Fleet, error) {
	b, err := inputlimit.ReadFile(path, inputlimit.FleetFile)
	if err != nil {
		return nil, fmt.Errorf("load fleet: %w", err)
	}
	f, err := Parse(path, b)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(path)
	for _, p := range []*string{&f.TLS.CA, &f.TLS.Cert, &f.TLS.Key} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	return f, nil
}

// Parse decodes and validates fleet.yaml contents; file names it in errors. TLS paths are
// left as written.
func Parse(file string, data []byte) (*Fleet, error) {
	f := &Fleet{}
	doc, err := strictyaml.Decode(file, data, Version, f)
	if err != nil {
		return nil, err
	}
	f.File = file
	if err := f.validate(doc); err != nil {
		return nil, err
	}
	return f, nil
}

// Host returns the named host.
func (f *Fleet) Host(name string) (Host, bool) {
	for _, h := range f.Hosts {
		if h.Name == name {
			return h, true
		}
	}
	return Host{}, false
}

// Container returns the entry for host/id.
func (f *Fleet) Container(host, id string) (Container, bool) {
	for _, c := range f.Containers {
		if c.Host == host && c.ID == id {
			return c, true
		}
	}
	return Container{}, false
}

// ByHost returns the container entries of each host, in file order.
func (f *Fleet) ByHost() map[string][]Container {
	m := make(map[string][]Container, len(f.Hosts))
	for _, h := range f.Hosts {
		m[h.Name] = nil
	}
	for _, c := range f.Containers {
		m[c.Host] = append(m[c.Host], c)
	}
	return m
}

var (
	hostNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	// A container id: a PVE vmid or a plain LXC container name.
	idRE    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	indexRE = regexp.MustCompile(`^[0-9]{1,3}$`)
	uuidRE  = regexp.MustCompile(`^(GPU|MIG)-[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$`)
	busRE   = regexp.MustCompile(`^([0-9A-Fa-f]{4,8}:)?[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]$`)
)

// ValidGPUSelector reports whether s names a GPU by index, UUID or PCI bus id.
func ValidGPUSelector(s string) bool {
	return indexRE.MatchString(s) || uuidRE.MatchString(s) || busRE.MatchString(s)
}

func (f *Fleet) validate(doc *strictyaml.Doc) error {
	if f.TLS.CA == "" || f.TLS.Cert == "" || f.TLS.Key == "" {
		missing := []string{}
		for _, kv := range [][2]string{{"ca", f.TLS.CA}, {"cert", f.TLS.Cert}, {"key", f.TLS.Key}} {
			if kv[1] == "" {
				missing = append(missing, "tls."+kv[0])
			}
		}
		return doc.Errorf(missing[0], "missing: %s are required (gpupass pki init/issue makes them)", strings.Join(missing, ", "))
	}
	if len(f.Hosts) == 0 {
		return doc.Errorf("hosts", "no hosts: add at least one {name, address}")
	}
	hosts := map[string]int{}
	addrs := map[string]int{}
	for i := range f.Hosts {
		h := &f.Hosts[i]
		p := fmt.Sprintf("hosts[%d]", i)
		if h.Name == "" {
			return doc.Errorf(p+".name", "missing")
		}
		if !hostNameRE.MatchString(h.Name) {
			return doc.Errorf(p+".name", "%q: use letters, digits, '.', '_' and '-'", h.Name)
		}
		if j, dup := hosts[h.Name]; dup {
			return doc.Errorf(p+".name", "host %q is already declared at hosts[%d]", h.Name, j)
		}
		hosts[h.Name] = i
		if h.Address == "" {
			return doc.Errorf(p+".address", "missing; write host:port, e.g. \"10.0.0.11:7420\"")
		}
		addr, err := normalizeAddress(h.Address)
		if err != nil {
			return doc.Errorf(p+".address", "%v", err)
		}
		h.Address = addr
		if j, dup := addrs[addr]; dup {
			return doc.Errorf(p+".address", "%s is already the address of hosts[%d]", addr, j)
		}
		addrs[addr] = i
		if h.ServerName == "" {
			h.ServerName, _, _ = net.SplitHostPort(addr)
		}
	}
	seen := map[string]int{}
	for i := range f.Containers {
		c := &f.Containers[i]
		p := fmt.Sprintf("containers[%d]", i)
		if c.Host == "" {
			return doc.Errorf(p+".host", "missing; name one of the hosts")
		}
		if _, ok := hosts[c.Host]; !ok {
			return doc.Errorf(p+".host", "unknown host %q; declare it under hosts", c.Host)
		}
		if c.ID == "" {
			return doc.Errorf(p+".id", "missing; the PVE vmid (\"901\") or LXC name")
		}
		if !idRE.MatchString(c.ID) {
			return doc.Errorf(p+".id", "%q is not a container id", c.ID)
		}
		if j, dup := seen[c.Key()]; dup {
			return doc.Errorf(p+".id", "container %s is already declared at containers[%d]", c.Key(), j)
		}
		seen[c.Key()] = i
		gpus := map[string]int{}
		for k, g := range c.GPUs {
			gp := fmt.Sprintf("%s.gpus[%d]", p, k)
			if !ValidGPUSelector(g) {
				return doc.Errorf(gp, "%q is not a GPU index (0), UUID (GPU-xxxxxxxx-...) or PCI bus id (0000:01:00.0)", g)
			}
			if j, dup := gpus[strings.ToLower(g)]; dup {
				return doc.Errorf(gp, "%q is already listed at gpus[%d]", g, j)
			}
			gpus[strings.ToLower(g)] = k
		}
		if c.GPUs == nil {
			c.GPUs = []string{}
		}
		switch c.Style {
		case "":
			c.Style = StyleRaw
		case StyleRaw, StyleDev:
		default:
			return doc.Errorf(p+".style", "%q: use raw or dev", c.Style)
		}
		switch c.Driver {
		case "":
			c.Driver = DriverOwn
		case DriverOwn, DriverHost:
		default:
			return doc.Errorf(p+".driver", "%q: use own (the template brings its NVIDIA userspace) or host (the host's, bound in at every start)", c.Driver)
		}
		switch c.State {
		case "", StateRunning:
		default:
			return doc.Errorf(p+".state", "%q: use running, or leave it out to keep the container as it is", c.State)
		}
	}
	return nil
}

func normalizeAddress(a string) (string, error) {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		// No port: accept a bare host name or IP (an IPv6 one in brackets or bare).
		h := strings.TrimSuffix(strings.TrimPrefix(a, "["), "]")
		if h == "" || strings.ContainsAny(h, " /") {
			return "", fmt.Errorf("%q is not host:port", a)
		}
		return net.JoinHostPort(h, DefaultPort), nil
	}
	if host == "" {
		return "", fmt.Errorf("%q names no host", a)
	}
	if port == "" {
		port = DefaultPort
	}
	var n int
	if _, err := fmt.Sscanf(port, "%d", &n); err != nil || n < 1 || n > 65535 || fmt.Sprint(n) != port {
		return "", fmt.Errorf("%q: port %q is not a number 1-65535", a, port)
	}
	return net.JoinHostPort(host, port), nil
}
