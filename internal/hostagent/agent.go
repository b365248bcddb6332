// Package hostagent is the host agent service: it plans and applies GPU assignments to the
// containers of this node, gathering the evidence the restart rule (internal/restartrule)
// judges, journals every apply and reconciles interrupted ones on start, serves the
// controller over mutual TLS, and turns guest reports and its own evidence into container
// readiness (internal/readiness), every reason typed (proto ReasonKind).
package hostagent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"gpupass/internal/atomicfile"
	"gpupass/internal/gpu"
	"gpupass/internal/guestchan"
	"gpupass/internal/hostconfig"
	"gpupass/internal/journal"
	"gpupass/internal/log"
	"gpupass/internal/runtime"
	pb "gpupass/proto/gpupass/v1"
)

// Agent is the host agent.
type Agent struct {
	cfg     *hostconfig.Config
	rt      runtime.Runtime
	guests  *guestchan.Registry
	journal *journal.Journal
	log     *log.Entry
	metrics *Metrics
	drv     *driverWatch
	name    string
	now     func() time.Time

	locks sync.Map // container id -> *sync.Mutex: applies to one container are serialised

	mu      sync.Mutex
	desired map[string]*pb.ContainerSpec // last applied spec per container
	exps    map[string]*pb.Expectation   // what each guest was told to check
	prepErr error                        // host preparation failure, reported as a reason
	// From the journal, reported by status: each container's unresolved conflict and its
	// quarantined (unreadable) journal files.
	conflicts   map[string]journal.Entry
	quarantined map[string][]journal.Broken
	base        context.Context // the agent's lifetime (Service.Run); applies outlive their callers

	refusals *log.Limiter // rate limits logs of refused connections
	persist  persistence  // the GPUs' persistence mode (persistence.go)
}

// Options are the agent's dependencies; zero values get production defaults.
type Options struct {
	Runtime runtime.Runtime
	Guests  *guestchan.Registry
	Log     *log.Entry
	Metrics *Metrics
	Name    string // host name reported to the controller; default os.Hostname
	Now     func() time.Time
}

// New builds an agent from its configuration.
func New(cfg *hostconfig.Config, opts Options) (*Agent, error) {
	if opts.Runtime == nil {
		return nil, errors.New("new host agent: no runtime")
	}
	if opts.Guests == nil {
		return nil, errors.New("new host agent: no guest registry")
	}
	if opts.Log == nil {
		opts.Log = log.Discard()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Name == "" {
		opts.Name, _ = os.Hostname()
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics()
	}
	a := &Agent{
		cfg:     cfg,
		rt:      opts.Runtime,
		guests:  opts.Guests,
		journal: &journal.Journal{Dir: filepath.Join(cfg.StateDir, "journal"), Now: opts.Now, Keep: cfg.JournalKeep, KeepFor: cfg.JournalKeepFor},
		log:     opts.Log,
		metrics: opts.Metrics,
		drv:     opts.Metrics.drv,
		name:    opts.Name,
		now:     opts.Now,
		desired: map[string]*pb.ContainerSpec{},
		exps:    map[string]*pb.Expectation{},

		refusals: log.NewLimiter(time.Minute),
	}
	if err := a.loadDesired(); err != nil {
		return nil, err
	}
	a.refreshJournalState()
	return a, nil
}

// lock serialises work on one container.
func (a *Agent) lock(id string) func() {
	m, _ := a.locks.LoadOrStore(id, &sync.Mutex{})
	mu := m.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

// discover reads the host's GPUs now.
func (a *Agent) discover() (*gpu.Inventory, error) {
	inv, err := gpu.Discover(a.cfg.HostRoot)
	a.noteDriver(inv)
	return inv, err
}

// procRoot is where the host's processes are seen (/proc/<pid>/root, mountinfo).
func (a *Agent) procRoot() string { return ProcRoot(a.cfg.HostRoot) }

// ProcRoot is <hostRoot>/proc when that is a real procfs, else /proc: a simulated GPU host
// root carries /proc/driver/nvidia and /proc/devices fixtures but no processes, and the
// containers' processes are always the real ones.
func ProcRoot(hostRoot string) string {
	p := filepath.Join(hostRoot, "proc")
	if _, err := os.Stat(filepath.Join(p, "self")); err == nil {
		return p
	}
	return "/proc"
}

func (a *Agent) desiredDir() string { return filepath.Join(a.cfg.StateDir, "desired") }

// remember persists the last applied spec of a container, so that status and guest
// expectations survive an agent restart.
func (a *Agent) remember(spec *pb.ContainerSpec) error {
	a.mu.Lock()
	a.desired[spec.GetId()] = spec
	a.mu.Unlock()
	if err := os.MkdirAll(a.desiredDir(), 0o700); err != nil {
		return fmt.Errorf("create desired dir: %w", err)
	}
	b, err := protojson.Marshal(spec)
	if err != nil {
		return fmt.Errorf("encode desired spec: %w", err)
	}
	path := filepath.Join(a.desiredDir(), journal.Sanitize(spec.GetId())+".json")
	if cur, err := os.ReadFile(path); err == nil && bytes.Equal(cur, b) {
		return nil // the same spec: an apply that changes nothing writes nothing
	}
	if err := atomicfile.Write(path, b, 0o600); err != nil {
		return fmt.Errorf("remember desired spec: %w", err)
	}
	return nil
}

func (a *Agent) loadDesired() error {
	ents, err := os.ReadDir(a.desiredDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read desired dir: %w", err)
	}
	for _, de := range ents {
		if filepath.Ext(de.Name()) != ".json" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(a.desiredDir(), de.Name()))
		if err != nil {
			return fmt.Errorf("read desired spec: %w", err)
		}
		spec := &pb.ContainerSpec{}
		if err := protojson.Unmarshal(b, spec); err != nil {
			a.log.WithError(err).WithField("file", de.Name()).Warn("ignoring unreadable desired spec")
			continue
		}
		a.desired[spec.GetId()] = spec
	}
	return nil
}

// desiredSpec returns the last applied spec of id, if any.
func (a *Agent) desiredSpec(id string) (*pb.ContainerSpec, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.desired[id]
	return s, ok
}

// knownIDs is every container the agent has a spec or a guest for.
func (a *Agent) knownIDs() []string {
	seen := map[string]bool{}
	a.mu.Lock()
	for id := range a.desired {
		seen[id] = true
	}
	a.mu.Unlock()
	for _, id := range a.guests.IDs() {
		seen[id] = true
	}
	out := make([]string, 0, len(seen))
	for id := range seen {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// inventory builds the HostInventory answer; withContainers adds a summary of every
// known container (one runtime query each: only host.Inventory asks for it).
func (a *Agent) inventory(ctx context.Context, withContainers bool) *pb.HostInventory {
	h := &pb.HostInventory{Name: a.name, AgentBuild: buildVersion(), Runtime: a.rt.Name(), Simulated: a.cfg.Simulated, Driver: &pb.Driver{}}
	inv, err := a.discover()
	if err != nil {
		h.Driver.Error = err.Error()
	}
	if inv != nil {
		h.Simulated = h.Simulated || inv.Simulated
		h.Driver.Loaded = err == nil || !errors.Is(err, gpu.ErrNoDriver)
		h.Driver.KernelVersion = inv.DriverVersion
		h.Driver.Change = a.driverChange()
		h.Driver.Majors = map[string]uint32{}
		for k, v := range inv.Majors {
			h.Driver.Majors[k] = v
		}
		modes := a.persistenceModes(ctx, withContainers)
		for _, g := range inv.GPUs {
			pg := gpuToPB(g)
			pg.PersistenceMode = modes[g.BusID]
			h.Gpus = append(h.Gpus, pg)
		}
	}
	a.metrics.gpus.Set(float64(len(h.Gpus)))
	if !withContainers {
		return h
	}
	active := a.activeSet(ctx)
	for _, id := range a.knownIDs() {
		cs := &pb.ContainerSummary{Id: id, RunState: "unknown"}
		if st, err := a.runStateOf(ctx, id, active); err == nil {
			cs.RunState = runState(st)
		}
		if snap, ok := a.guests.Latest(id); ok {
			cs.GuestConnected = snap.Connected
		}
		if spec, ok := a.desiredSpec(id); ok {
			cs.Gpus = spec.GetGpus()
		}
		h.Containers = append(h.Containers, cs)
	}
	return h
}

func gpuToPB(g gpu.GPU) *pb.GPU {
	return &pb.GPU{Index: uint32(g.Index), Uuid: g.UUID, Minor: g.Minor, BusId: g.BusID, Model: g.Model}
}

func runState(st runtime.State) string {
	if st.Running {
		return "running"
	}
	return "stopped"
}

// setExpectation records what the guest of id must check and pushes it to the guest.
func (a *Agent) setExpectation(id string, exp *pb.Expectation) {
	a.mu.Lock()
	a.exps[id] = exp
	a.mu.Unlock()
	a.guests.SetExpectation(id, exp)
}

// expectationOf returns what the guest of id was last told to check.
func (a *Agent) expectationOf(id string) (*pb.Expectation, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.exps[id]
	return e, ok
}
