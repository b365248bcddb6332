package fleet

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"google.golang.org/protobuf/testing/protocmp"

	"gpupass/internal/inputlimit"
	"gpupass/internal/strictyaml"
	pb "gpupass/proto/gpupass/v1"
)

const good = `version: 1
tls: {ca: pki/ca.crt, cert: pki/controller.crt, key: pki/controller.key}
hosts:
  - {name: pve1, address: "10.0.0.11:7420"}
  - {name: pve2, address: "pve2.example.org"}
containers:
  - {host: pve1, id: "901", gpus: ["0", "1"], style: raw}
  - {host: pve1, id: 902, gpus: [1], style: dev, require_network: true, state: running}
  - {host: pve2, id: ct-build, gpus: [GPU-5f2b7c1e-8a3d-4c2b-9e1f-0a1b2c3d4e5f, "0000:41:00.0"]}
  - {host: pve2, id: "950", gpus: []}
  - {host: pve2, id: "951", gpus: ["0"], mig_caps: true, driver: host}
`

func TestParseGood(t *testing.T) {
	f, err := Parse("fleet.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	want := &Fleet{
		Version: 1,
		TLS:     TLS{CA: "pki/ca.crt", Cert: "pki/controller.crt", Key: "pki/controller.key"},
		Hosts: []Host{
			{Name: "pve1", Address: "10.0.0.11:7420", ServerName: "10.0.0.11"},
			{Name: "pve2", Address: "pve2.example.org:7420", ServerName: "pve2.example.org"},
		},
		Containers: []Container{
			{Host: "pve1", ID: "901", GPUs: []string{"0", "1"}, Style: "raw", Driver: "own"},
			{Host: "pve1", ID: "902", GPUs: []string{"1"}, Style: "dev", RequireNetwork: true, State: "running", Driver: "own"},
			{Host: "pve2", ID: "ct-build", GPUs: []string{"GPU-5f2b7c1e-8a3d-4c2b-9e1f-0a1b2c3d4e5f", "0000:41:00.0"}, Style: "raw", Driver: "own"},
			{Host: "pve2", ID: "950", GPUs: []string{}, Style: "raw", Driver: "own"},
			{Host: "pve2", ID: "951", GPUs: []string{"0"}, Style: "raw", MIGCaps: true, Driver: "host"},
		},
		File: "fleet.yaml",
	}
	if diff := cmp.Diff(f, want); diff != "" {
		t.Fatalf("(-got +want)\n%s", diff)
	}
	wantSpec := &pb.ContainerSpec{Id: "902", Gpus: []string{"1"}, Style: pb.Style_STYLE_DEV, RequireNetwork: true, WantState: "running"}
	if diff := cmp.Diff(f.Containers[1].Spec(), wantSpec, protocmp.Transform()); diff != "" {
		t.Errorf("Spec (-got +want)\n%s", diff)
	}
	// mig_caps travels to the host agent; without it whole GPUs get no caps nodes.
	if !f.Containers[4].Spec().GetMigCaps() || f.Containers[0].Spec().GetMigCaps() {
		t.Errorf("mig_caps in Spec: %v, %v; want true, false", f.Containers[4].Spec().GetMigCaps(), f.Containers[0].Spec().GetMigCaps())
	}
	// driver: host travels to the host agent; own (the default) is left out.
	if f.Containers[4].Spec().GetDriver() != "host" || f.Containers[0].Spec().GetDriver() != "" {
		t.Errorf("driver in Spec: %q, %q; want host, empty", f.Containers[4].Spec().GetDriver(), f.Containers[0].Spec().GetDriver())
	}
	if got := f.ByHost(); len(got["pve1"]) != 2 || len(got["pve2"]) != 3 {
		t.Errorf("ByHost = %v", got)
	}
}

func TestLoadResolvesTLSPaths(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "fleet.yaml")
	if err := os.WriteFile(p, []byte(strings.Replace(good, "key: pki/controller.key", "key: /etc/gpupass/c.key", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	got := f.TLS
	want := TLS{CA: filepath.Join(dir, "pki/ca.crt"), Cert: filepath.Join(dir, "pki/controller.crt"), Key: "/etc/gpupass/c.key"}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Fatalf("(-got +want)\n%s", diff)
	}
}

func TestParseErrors(t *testing.T) {
	head := "version: 1\ntls: {ca: a, cert: b, key: c}\nhosts:\n  - {name: pve1, address: \"10.0.0.11:7420\"}\n"
	tests := []struct {
		name, in, want string
		version        bool
	}{
		{"empty", "", "f.yaml: empty file; it must start with version: 1", false},
		{"missing version", "hosts: []\n", "f.yaml:1: version: missing; add version: 1 as the first line", true},
		{"unknown version", "version: 2\n", "f.yaml:1: version: unsupported version 2: this gpupass reads version 1 (upgrade gpupass or convert the file)", true},
		{"string version", "version: \"1\"\n", `f.yaml:1: version: must be the integer 1, got "1"`, true},
		{"not a mapping", "- a\n", "f.yaml:1: the document must be a mapping of keys (version, ...)", false},
		{"syntax", "version: 1\nhosts: [\n", "f.yaml:2: invalid YAML: did not find expected node content", false},
		{"trailing document", head + "---\nversion: 1\n", "f.yaml:5: a second YAML document ('---') follows; keep one document per file", false},
		{"unknown top key", head + "containerz: []\n", "f.yaml:5: containerz: unknown field; known fields here: version, tls, hosts, containers", false},
		{"unknown nested key", head + "containers:\n  - {host: pve1, id: \"1\", gpu: [0]}\n", "f.yaml:6: containers[0].gpu: unknown field; known fields here: host, id, gpus, style, require_network, state, mig_caps, driver", false},
		{"bad driver", head + "containers:\n  - {host: pve1, id: \"1\", gpus: [0], driver: hots}\n", "f.yaml:6: containers[0].driver: \"hots\": use own (the template brings its NVIDIA userspace) or host (the host's, bound in at every start)", false},
		{"duplicate key", head + "containers:\n  - {host: pve1, id: \"1\", id: \"2\"}\n", "f.yaml:6: containers[0].id: set twice", false},
		{"bad gpu deep", head + "containers:\n  - {host: pve1, id: \"1\"}\n  - {host: pve1, id: \"2\"}\n  - {host: pve1, id: \"3\"}\n  - {host: pve1, id: \"4\", gpus: [\"0\", \"nvidia1\"]}\n",
			`f.yaml:9: containers[3].gpus[1]: "nvidia1" is not a GPU index (0), UUID (GPU-xxxxxxxx-...) or PCI bus id (0000:01:00.0)`, false},
		{"bool gpu", head + "containers:\n  - {host: pve1, id: \"1\", gpus: [yes, true]}\n", `f.yaml:6: containers[0].gpus[1]: must be a string (quote it), got bool "true"`, false},
		{"float id", head + "containers:\n  - {host: pve1, id: 1.10}\n", `f.yaml:6: containers[0].id: must be a string (quote it), got float "1.10"`, false},
		{"gpus not a list", head + "containers:\n  - {host: pve1, id: \"1\", gpus: none}\n", `f.yaml:6: containers[0].gpus: must be a list, got str "none"`, false},
		{"duplicate gpu", head + "containers:\n  - {host: pve1, id: \"1\", gpus: [0, \"0\"]}\n", `f.yaml:6: containers[0].gpus[1]: "0" is already listed at gpus[0]`, false},
		{"unknown host", head + "containers:\n  - {host: pve9, id: \"1\"}\n", `f.yaml:6: containers[0].host: unknown host "pve9"; declare it under hosts`, false},
		{"empty id", head + "containers:\n  - {host: pve1, id: \"\"}\n", `f.yaml:6: containers[0].id: missing; the PVE vmid ("901") or LXC name`, false},
		{"duplicate container", head + "containers:\n  - {host: pve1, id: \"1\"}\n  - {host: pve1, id: 1}\n", `f.yaml:7: containers[1].id: container pve1/1 is already declared at containers[0]`, false},
		{"bad style", head + "containers:\n  - {host: pve1, id: \"1\", style: pve}\n", `f.yaml:6: containers[0].style: "pve": use raw or dev`, false},
		{"bad state", head + "containers:\n  - {host: pve1, id: \"1\", state: stopped}\n", `f.yaml:6: containers[0].state: "stopped": use running, or leave it out to keep the container as it is`, false},
		{"require_network string", head + "containers:\n  - {host: pve1, id: \"1\", require_network: \"yes\"}\n", `f.yaml:6: containers[0].require_network: must be true or false, got str "yes"`, false},
		{"duplicate host", head + "  - {name: pve1, address: \"10.0.0.12:7420\"}\n", `f.yaml:5: hosts[1].name: host "pve1" is already declared at hosts[0]`, false},
		{"duplicate address", head + "  - {name: pve2, address: \"10.0.0.11:7420\"}\n", `f.yaml:5: hosts[1].address: 10.0.0.11:7420 is already the address of hosts[0]`, false},
		{"bad port", head + "  - {name: pve2, address: \"10.0.0.12:99999\"}\n", `f.yaml:5: hosts[1].address: "10.0.0.12:99999": port "99999" is not a number 1-65535`, false},
		{"missing address", head + "  - {name: pve2}\n", `f.yaml:5: hosts[1].address: missing; write host:port, e.g. "10.0.0.11:7420"`, false},
		{"no hosts", "version: 1\ntls: {ca: a, cert: b, key: c}\n", `f.yaml:1: hosts: no hosts: add at least one {name, address}`, false},
		{"missing tls", "version: 1\ntls: {ca: a}\nhosts: []\n", `f.yaml:2: tls.cert: missing: tls.cert, tls.key are required (gpupass pki init/issue makes them)`, false},
		{"alias", head + "containers:\n  - &c {host: pve1, id: \"1\"}\n  - *c\n", `f.yaml:7: containers[1]: aliases (*name) are not supported; write the value out`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("f.yaml", []byte(tt.in))
			if err == nil {
				t.Fatal("accepted")
			}
			if diff := cmp.Diff(err.Error(), tt.want); diff != "" {
				t.Errorf("(-got +want)\n%s", diff)
			}
			var se *strictyaml.Error
			if !errors.As(err, &se) {
				t.Errorf("error %T is not a *strictyaml.Error", err)
			}
			if got := errors.Is(err, strictyaml.ErrUnsupportedVersion); got != tt.version {
				t.Errorf("errors.Is(ErrUnsupportedVersion) = %v, want %v", got, tt.version)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(good))
	f.Add([]byte("version: 1\n"))
	f.Add([]byte("version: 1\ntls: {ca: a, cert: b, key: c}\nhosts: [{name: a, address: b}]\ncontainers: [{host: a, id: 1, gpus: [0]}]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fl, err := Parse("fuzz.yaml", b)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		for _, c := range fl.Containers {
			if _, ok := fl.Host(c.Host); !ok || c.ID == "" || c.GPUs == nil {
				t.Fatalf("invalid container accepted: %+v", c)
			}
		}
	})
}

// A 50 MiB fleet.yaml is refused before it is parsed: fast, and without reading it all.
func TestLoadRefusesHugeFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "fleet.yaml")
	fh, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fh.WriteString(good); err != nil {
		t.Fatal(err)
	}
	line := []byte("  - {host: pve1, id: \"999\", gpus: [\"0\"]}  # padding padding padding padding\n")
	for written := len(good); written < 50<<20; written += len(line) {
		if _, err := fh.Write(line); err != nil {
			t.Fatal(err)
		}
	}
	fh.Close()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	_, err = Load(p)
	took := time.Since(start)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, inputlimit.ErrTooLarge) || !strings.Contains(err.Error(), p) {
		t.Fatalf("err = %v, want ErrTooLarge naming the file", err)
	}
	t.Logf("refused after %v, %d KiB allocated: %v", took, (after.TotalAlloc-before.TotalAlloc)>>10, err)
	if took > time.Second {
		t.Errorf("refusal took %v, want well under a second", took)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
		t.Errorf("refusal allocated %d bytes, want under 1 MiB", alloc)
	}
}
