package cli

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"gpupass/internal/controller"
	"gpupass/internal/controller/agenttest"
	"gpupass/internal/log"
	"gpupass/internal/pki"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// world is a fleet of fake hosts and the fleet file naming them.
type world struct {
	dir    string
	file   string
	agents map[string]*agenttest.Agent
	addrs  map[string]string // address -> placeholder for golden files
}

func newWorld(t *testing.T, withDead bool) *world {
	t.Helper()
	p := agenttest.NewPKI(t)
	w := &world{dir: t.TempDir(), agents: map[string]*agenttest.Agent{}, addrs: map[string]string{}}
	start := func(a *agenttest.Agent) string {
		a.Log = log.ForTest(t, "agent-"+a.Name)
		addr := a.Serve(t, agenttest.Listen(t, ""), p.HostTLS(t, a.Name, net.ParseIP("127.0.0.1")))
		w.agents[a.Name] = a
		w.addrs[addr] = placeholder(addr, a.Name)
		return addr
	}
	pve1 := agenttest.New("pve1")
	pve1.Add(agenttest.Container{ID: "901", GPUs: []string{"0"}, Guest: true, Lib: agenttest.KernelVersion, Network: true})
	pve1.Add(agenttest.Container{ID: "902", GPUs: []string{"1"}, Guest: true, Lib: "550.54.14", Network: true})
	pve1.Add(agenttest.Container{ID: "903", RunState: "stopped", GPUs: []string{}, Guest: true, Lib: agenttest.KernelVersion, Network: true})
	a1 := start(pve1)
	pve2 := agenttest.New("pve2")
	pve2.Simulated = true
	pve2.Add(agenttest.Container{ID: "950", GPUs: []string{"0"}, Guest: true, Network: true})
	pve2.Add(agenttest.Container{ID: "951", GPUs: []string{"1"}, Guest: true, Lib: agenttest.KernelVersion, Denied: true, Network: true})
	a2 := start(pve2)

	var b strings.Builder
	fmt.Fprintf(&b, "version: 1\ntls: {ca: %s, cert: %s, key: %s}\nhosts:\n", p.CAFile, p.ControllerCert, p.ControllerKey)
	fmt.Fprintf(&b, "  - {name: pve1, address: %q}\n  - {name: pve2, address: %q}\n", a1, a2)
	if withDead {
		dead := agenttest.Refused(t)
		w.addrs[dead] = placeholder(dead, "pve3")
		fmt.Fprintf(&b, "  - {name: pve3, address: %q}\n", dead)
	}
	b.WriteString("containers:\n")
	b.WriteString("  - {host: pve1, id: \"901\", gpus: [\"0\", \"1\"]}\n")
	b.WriteString("  - {host: pve1, id: \"902\", gpus: [1]}\n")
	b.WriteString("  - {host: pve1, id: \"903\", gpus: [\"0\"], state: running}\n")
	b.WriteString("  - {host: pve2, id: \"950\", gpus: [\"0\"]}\n")
	b.WriteString("  - {host: pve2, id: \"951\", gpus: [\"1\"], require_network: true, driver: host}\n")
	if withDead {
		b.WriteString("  - {host: pve3, id: \"960\", gpus: [\"0\"]}\n")
	}
	w.file = filepath.Join(w.dir, "fleet.yaml")
	if err := os.WriteFile(w.file, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return w
}

// placeholder stands for addr in golden files; it keeps addr's length so that tables stay
// aligned the same way.
func placeholder(addr, host string) string {
	return fmt.Sprintf("%-*s", len(addr), "ADDR-"+host)
}

type result struct {
	code           int
	stdout, stderr string
}

// env is the environment the commands see: no colour override, the TLS session cache
// off unless a test sets it.
var env = map[string]string{"GPUPASS_TLS_SESSION_CACHE": "off"}

func run(t *testing.T, terminal bool, args ...string) result {
	t.Helper()
	return runEnv(t, env, terminal, args...)
}

func runEnv(t *testing.T, env map[string]string, terminal bool, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return runCtx(ctx, t, env, terminal, args...)
}

func runCtx(ctx context.Context, t *testing.T, env map[string]string, terminal bool, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := Run(ctx, args, IO{Stdout: &out, Stderr: &errb, Terminal: terminal, Width: 200,
		Getenv: func(k string) string { return env[k] }, Log: log.ForTest(t, "cli")})
	return result{code, out.String(), errb.String()}
}

var (
	elapsedRE = regexp.MustCompile(`"elapsed_ms": [0-9]+`)
	clockRE   = regexp.MustCompile(`(?m)^[0-9]{2}:[0-9]{2}:[0-9]{2} `)
	portRE    = regexp.MustCompile(`127\.0\.0\.1:[0-9]+`)
	elapsedLn = regexp.MustCompile(`[0-9.]+m?s elapsed`)
)

// normalize replaces what changes from run to run.
func (w *world) normalize(s string) string {
	for addr, ph := range w.addrs {
		s = strings.ReplaceAll(s, addr, ph)
	}
	s = elapsedRE.ReplaceAllString(s, `"elapsed_ms": 0`)
	s = clockRE.ReplaceAllString(s, "HH:MM:SS ")
	s = elapsedLn.ReplaceAllString(s, "T elapsed")
	s = strings.ReplaceAll(s, w.dir, "DIR")
	return portRE.ReplaceAllString(s, "127.0.0.1:PORT")
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if diff := cmp.Diff(got, string(want)); diff != "" {
		t.Errorf("%s (-got +want)\n%s", p, diff)
	}
}

func TestPlanStatusApplyDoctor(t *testing.T) {
	w := newWorld(t, false)
	f := w.file

	tests := []struct {
		name   string
		args   []string
		code   int
		golden string
	}{
		{"plan table", []string{"plan", "-f", f}, 2, "plan.txt"},
		{"plan json", []string{"plan", "-f", f, "-o", "json"}, 2, "plan.json"},
		// Before a host driver upgrade to 580.159.04: 951 (driver: host) realigns, the own
		// ones with another userspace (901 580.95.05, 902 550.54.14) would break.
		{"plan driver version", []string{"plan", "-f", f, "--driver-version", "580.159.04"}, 2, "plan-driver-version.txt"},
		{"status table", []string{"status", "-f", f}, 2, "status.txt"},
		{"status json", []string{"status", "-f", f, "-o", "json"}, 2, "status.json"},
		{"doctor version mismatch", []string{"doctor", "-f", f, "pve1/902"}, 2, "doctor-902.txt"},
		{"doctor denied", []string{"doctor", "-f", f, "pve2/951"}, 2, "doctor-951.txt"},
		{"doctor changes pending", []string{"doctor", "-f", f, "pve1/901"}, 2, "doctor-901.txt"},
		{"doctor json", []string{"doctor", "-f", f, "pve1/902", "-o", "json"}, 2, "doctor-902.json"},
		{"doctor ready with a warning", []string{"doctor", "-f", f, "pve2/950"}, 0, "doctor-950.txt"},
		{"doctor stopped, asked to run", []string{"doctor", "-f", f, "pve1/903"}, 2, "doctor-903.txt"},
		{"apply", []string{"apply", "-f", f, "--timeout", "5s", "--parallel", "1"}, 2, "apply.txt"},
		{"plan after apply", []string{"plan", "-f", f}, 0, "plan-after-apply.txt"},
		{"status after apply", []string{"status", "-f", f, "-o", "json"}, 2, "status-after-apply.json"},
		{"doctor ready", []string{"doctor", "-f", f, "pve1/901"}, 0, "doctor-901-after-apply.txt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, false, tt.args...)
			if r.code != tt.code {
				t.Errorf("exit code %d, want %d; stderr: %s", r.code, tt.code, r.stderr)
			}
			golden(t, tt.golden, w.normalize(r.stdout))
		})
	}
}

func TestExitCodesAndUnreachable(t *testing.T) {
	w := newWorld(t, true)
	start := time.Now()
	r := run(t, false, "status", "-f", w.file, "-o", "json", "--timeout", "2s")
	if r.code != controller.ExitError {
		t.Errorf("status with an unreachable host: exit %d, want 1", r.code)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("status took %s with a dead host", took)
	}
	var rep controller.Report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if h := rep.Hosts[2]; h.Reachable || !strings.Contains(h.Error, "connection refused") {
		t.Errorf("pve3 = %+v", h)
	}
	if c := rep.Containers[5]; c.State != controller.StateUnreachable || len(c.Reasons) != 1 {
		t.Errorf("pve3/960 = %+v", c)
	}
	r = run(t, false, "plan", "-f", w.file)
	if r.code != controller.ExitError || !strings.Contains(r.stdout, "pve3/960  gpus 0  unreachable") {
		t.Errorf("plan with an unreachable host: exit %d\n%s", r.code, r.stdout)
	}
}

func TestCommandErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "fleet.yaml")
	if err := os.WriteFile(bad, []byte("version: 1\ntls: {ca: a, cert: b, key: c}\nhosts: [{name: a, address: \"x:1\"}]\ncontainers:\n  - {host: a, id: \"1\", gpus: [\"0\", zero]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"fleet error names field and line", []string{"status", "-f", bad}, bad + `:5: containers[0].gpus[1]: "zero" is not a GPU index`},
		{"missing fleet", []string{"plan", "-f", filepath.Join(dir, "nope.yaml")}, "load fleet: open " + filepath.Join(dir, "nope.yaml")},
		{"missing fleet says -f", []string{"status", "-f", filepath.Join(dir, "nope.yaml")}, "no such file or directory: name the fleet file with -f FILE (the default is ./fleet.yaml"},
		{"bad output", []string{"status", "-f", bad, "-o", "yaml"}, `-o "yaml": use table or json`},
		{"bad timeout", []string{"apply", "-f", bad, "--timeout", "soon"}, `--timeout "soon": use a positive duration`},
		{"doctor needs host/id", []string{"doctor", "-f", bad, "901"}, `"901": name the container as HOST/ID`},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"missing certs", []string{"status", "-f", strings.TrimSuffix(bad, "fleet.yaml") + "ok.yaml"}, "tls: load CA certificate"},
	}
	if err := os.WriteFile(filepath.Join(dir, "ok.yaml"), []byte("version: 1\ntls: {ca: a, cert: b, key: c}\nhosts: [{name: a, address: \"x:1\"}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, false, tt.args...)
			if r.code != 1 {
				t.Errorf("exit %d, want 1", r.code)
			}
			if !strings.Contains(r.stderr, tt.want) {
				t.Errorf("stderr %q does not contain %q", r.stderr, tt.want)
			}
		})
	}
}

func TestImportAndPKI(t *testing.T) {
	dir := t.TempDir()
	r := run(t, false, "import", "phoenix", "../../fleet/testdata/phoenix_lxc_configs.json", "--host", "pve-gpu-01", "--address", "10.0.0.11")
	if r.code != 0 {
		t.Fatalf("import: exit %d: %s", r.code, r.stderr)
	}
	want, err := os.ReadFile("../../fleet/testdata/phoenix.fleet.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(r.stdout, strings.Replace(string(want), "from phoenix_lxc_configs.json", "from ../../fleet/testdata/phoenix_lxc_configs.json", 1)); diff != "" {
		t.Errorf("import stdout (-got +want)\n%s", diff)
	}
	if !strings.Contains(r.stderr, "warning: lxc_configs.*.memory_mb (containers 901, 902, 903, 910, 920, 950) not carried over") {
		t.Errorf("warnings: %s", r.stderr)
	}
	if r := run(t, false, "import", "phoenix", "x.json"); r.code != 1 || !strings.Contains(r.stderr, `"host" not set`) {
		t.Errorf("import without --host: %+v", r)
	}

	pkiDir := filepath.Join(dir, "pki")
	steps := []struct {
		args []string
		code int
	}{
		{[]string{"pki", "init", "--dir", pkiDir}, 0},
		{[]string{"pki", "init", "--dir", pkiDir}, 1},
		{[]string{"pki", "issue", "--dir", pkiDir, "--name", "pve1", "--ip", "10.0.0.11", "--ip", "fd00::11", "--dns", "pve1.lan"}, 0},
		{[]string{"pki", "issue", "--dir", pkiDir, "--name", "controller"}, 0},
		{[]string{"pki", "issue", "--dir", pkiDir, "--name", "pve1"}, 1},
		{[]string{"pki", "issue", "--dir", pkiDir, "--name", "pve2", "--ip", "not-an-ip"}, 1},
		{[]string{"pki", "issue", "--dir", pkiDir, "--role", "controller", "--name", "ci"}, 0},
		{[]string{"pki", "issue", "--dir", pkiDir, "--role", "admin", "--name", "x"}, 1},
	}
	for _, s := range steps {
		if r := run(t, false, s.args...); r.code != s.code {
			t.Errorf("%v: exit %d, want %d; %s", s.args, r.code, s.code, r.stderr)
		}
	}
	for _, n := range []string{"ca.key", "pve1.key", "controller.key"} {
		fi, err := os.Stat(filepath.Join(pkiDir, n))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", n, fi, err)
		}
	}
	// Roles: explicit, and by default from the name.
	for name, want := range map[string]pki.Role{"ci": pki.RoleController, "controller": pki.RoleController, "pve1": pki.RoleHost} {
		b, err := os.ReadFile(filepath.Join(pkiDir, name+".crt"))
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if got := pki.RoleOf(cert); got != want {
			t.Errorf("%s: role %q, want %q", name, got, want)
		}
	}
	if r := run(t, false, "version"); r.code != 0 || !strings.HasPrefix(r.stdout, "gpupass ") {
		t.Errorf("version: %+v", r)
	}
}

func TestTLSSessionCacheAcrossRuns(t *testing.T) {
	w := newWorld(t, false)
	cache := filepath.Join(t.TempDir(), "sessions.json")
	e := map[string]string{"GPUPASS_TLS_SESSION_CACHE": cache}
	for i := 0; i < 2; i++ {
		if r := runEnv(t, e, false, "status", "-f", w.file, "-o", "json"); r.code != 2 {
			t.Fatalf("run %d: exit %d: %s", i, r.code, r.stderr)
		}
	}
	fi, err := os.Stat(cache)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("cache file: %v %v", fi, err)
	}
	for name, a := range w.agents {
		if a.Resumed() != 1 {
			t.Errorf("%s: %d resumed handshakes over two runs, want 1 (the second)", name, a.Resumed())
		}
	}
}

func TestStatusWatch(t *testing.T) {
	w := newWorld(t, false)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		// Once the watch is up, a guest's library gets fixed; then the user presses ^C.
		for w.agents["pve1"].Calls("host.Watch") == 0 || w.agents["pve2"].Calls("host.Watch") == 0 {
			time.Sleep(10 * time.Millisecond)
		}
		w.agents["pve1"].Update("902", func(c *agenttest.Container) { c.Lib = agenttest.KernelVersion })
		time.Sleep(300 * time.Millisecond)
		cancel()
	}()
	r := runCtx(ctx, t, env, false, "status", "-f", w.file, "--watch", "-o", "json")
	if r.code != 0 {
		t.Fatalf("watch exit %d: %s", r.code, r.stderr)
	}
	var got []string
	seen := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var ev struct {
			Time  string `json:"time"`
			Host  string `json:"host"`
			ID    string `json:"id"`
			State string `json:"state"`
		}
		if err := json.Unmarshal([]byte(line), &ev); err != nil || ev.Time == "" {
			t.Fatalf("bad line %q: %v", line, err)
		}
		// An event whose state is the container's last one is not a readiness change:
		// the first answer judges the restart against the fleet's spec, the host's watch
		// against its last applied one (pve1/901's restart flag differs), so such an
		// event may come.
		key := ev.Host + "/" + ev.ID + " " + ev.State
		if seen[ev.Host+"/"+ev.ID] == key {
			continue
		}
		seen[ev.Host+"/"+ev.ID] = key
		got = append(got, key)
	}
	if len(got) != 6 {
		t.Fatalf("want 5 initial states and 1 change, got %q", got)
	}
	initial := map[string]bool{}
	for _, g := range got[:5] {
		initial[g] = true
	}
	want := map[string]bool{"pve1/901 ready": true, "pve1/902 not-ready": true, "pve1/903 stopped": true, "pve2/950 ready": true, "pve2/951 not-ready": true}
	if diff := cmp.Diff(initial, want); diff != "" {
		t.Errorf("initial (-got +want)\n%s", diff)
	}
	if got[5] != "pve1/902 ready" {
		t.Errorf("change = %q, want pve1/902 ready", got[5])
	}
}

func TestApplyOnTerminal(t *testing.T) {
	w := newWorld(t, false)
	r := run(t, true, "apply", "-f", w.file)
	if r.code != 2 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	for _, s := range []string{"\x1b[2K", "A\x1b[2K", "\x1b[32mready\x1b[0m", "Apply: 5 containers"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("terminal output lacks %q", s)
		}
	}
	noColor := map[string]string{"GPUPASS_TLS_SESSION_CACHE": "off", "NO_COLOR": "1"}
	r = runEnv(t, noColor, true, "status", "-f", w.file)
	if strings.Contains(r.stdout, "\x1b[") {
		t.Errorf("NO_COLOR output has escapes:\n%s", r.stdout)
	}
}

// TestApplyPlanNamesMissingAnswers: apply --plan with a plan made while a host did not
// answer says so, naming the host and why, instead of doubting the file's format; a
// status report given as a plan is named as such. Nothing is applied (exit 1).
func TestApplyPlanNamesMissingAnswers(t *testing.T) {
	w := newWorld(t, true)
	save := func(name string, args ...string) string {
		r := run(t, false, args...)
		p := filepath.Join(w.dir, name)
		if err := os.WriteFile(p, []byte(r.stdout), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	planFile := save("plan.json", "plan", "-f", w.file, "-o", "json", "--timeout", "2s")
	statusFile := save("status.json", "status", "-f", w.file, "-o", "json", "--timeout", "2s")
	tests := []struct {
		name, plan string
		want       []string
	}{
		{"host without an answer", planFile, []string{"read plan " + planFile + ": it has no answer from host pve3 (", "connection refused", "run gpupass plan again when every host answers"}},
		{"status, not a plan", statusFile, []string{"it has no answer from host pve3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, false, "apply", "-f", w.file, "--plan", tt.plan, "--timeout", "2s")
			if r.code != controller.ExitError {
				t.Errorf("exit %d, want 1", r.code)
			}
			for _, s := range tt.want {
				if !strings.Contains(r.stderr, s) {
					t.Errorf("stderr %q lacks %q", r.stderr, s)
				}
			}
			if r.stdout != "" {
				t.Errorf("apply ran: %s", r.stdout)
			}
		})
	}
	// Every host answering, a status report is not taken for a plan.
	w2 := newWorld(t, false)
	statusOK := filepath.Join(w2.dir, "status.json")
	if err := os.WriteFile(statusOK, []byte(run(t, false, "status", "-f", w2.file, "-o", "json").stdout), 0o644); err != nil {
		t.Fatal(err)
	}
	r := run(t, false, "apply", "-f", w2.file, "--plan", statusOK)
	if want := "it is the JSON of gpupass status, not of gpupass plan -o json"; r.code != controller.ExitError || !strings.Contains(r.stderr, want) {
		t.Errorf("status as plan: exit %d, stderr %q, want 1 and %q", r.code, r.stderr, want)
	}
}

// TestHelpNamesDurations: --help shows duration flags as durations, with their defaults.
func TestHelpNamesDurations(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"plan", []string{"plan", "--help"}, []string{"--timeout duration", "(default 10s)"}},
		{"status", []string{"status", "--help"}, []string{"--timeout duration"}},
		{"doctor", []string{"doctor", "--help"}, []string{"--timeout duration"}},
		{"apply", []string{"apply", "--help"}, []string{"--timeout duration", "(default 2m0s)", "--connect-timeout duration"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, false, tt.args...)
			if r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			for _, s := range tt.want {
				if !strings.Contains(r.stdout, s) {
					t.Errorf("help lacks %q:\n%s", s, r.stdout)
				}
			}
			if regexp.MustCompile(`timeout string`).MatchString(r.stdout) {
				t.Errorf("help shows a timeout as a string:\n%s", r.stdout)
			}
		})
	}
}
