package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"gpupass/internal/guestchan"
	"gpupass/internal/hostagent"
	"gpupass/internal/hostconfig"
	"gpupass/internal/log"
	"gpupass/internal/pki"
	"gpupass/internal/runtime"
	"gpupass/internal/wire"
	pb "gpupass/proto/gpupass/v1"
)

// SimHost is one in-process host agent: the real hostagent.Agent and guest registry,
// serving controllers on its own loopback address with its own certificate, its
// containers' guests connected over real unix sockets. Only the runtime is a stand-in
// (every container runs), so that a status costs what the agent itself does, not 2000
// lxc-info processes on one machine.
type SimHost struct {
	Name, Addr string
	agent      *hostagent.Agent
	guests     *guestchan.Registry
}

// SimFleet is many SimHosts in this process.
type SimFleet struct {
	Hosts  []*SimHost
	cancel context.CancelFunc
	wg     sync.WaitGroup
	conns  []*wire.Session
}

// Close stops every host and guest.
func (f *SimFleet) Close() {
	for _, c := range f.conns {
		c.Close()
	}
	f.cancel()
	f.wg.Wait()
}

// simContainers are the GPU containers of every simulated host.
var simContainers = []string{"901", "902"}

// StartSimFleet starts n hosts on 127.0.x.y, each with two ready GPU containers.
func (e *Env) StartSimFleet(ctx context.Context, n int) (*SimFleet, error) {
	ca, err := pki.LoadCA(e.PKIDir())
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	ctx, cancel := context.WithCancel(ctx)
	f := &SimFleet{cancel: cancel}
	dir := filepath.Join(e.Work, "fleet")
	for i := range n {
		ip := net.IPv4(127, 0, byte(1+i/250), byte(1+i%250))
		name := fmt.Sprintf("pve%04d", i)
		crt, key, err := ca.Issue(pki.IssueRequest{Name: name, IPs: []net.IP{ip}}, pki.Options{})
		if err != nil {
			f.Close()
			return nil, err
		}
		pair, err := tls.X509KeyPair(crt, key)
		if err != nil {
			f.Close()
			return nil, err
		}
		// As pki.ServerTLS.
		tc := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{pair}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
		h, err := f.startHost(ctx, filepath.Join(dir, fmt.Sprint(i)), name, e.HostRoot(), ip, tc)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("host %d: %w", i, err)
		}
		f.Hosts = append(f.Hosts, h)
	}
	return f, nil
}

func (f *SimFleet) startHost(ctx context.Context, dir, name, hostRoot string, ip net.IP, tc *tls.Config) (*SimHost, error) {
	cfg := hostconfig.Default()
	cfg.StateDir = filepath.Join(dir, "state")
	cfg.GuestSocketDir = filepath.Join(dir, "g")
	cfg.HostRoot = hostRoot
	cfg.Simulated = true
	cfg.Heartbeat = time.Hour // one report per guest; none goes stale during the run
	// Every guest of this process connects from this process: the peer's cgroup is
	// taken from the socket it dialled instead (the identity check itself still runs).
	reg := guestchan.New(guestchan.Config{
		Dir: cfg.GuestSocketDir, Heartbeat: cfg.Heartbeat, Log: log.Discard(), Build: "bench",
		PeerPID: func(c *net.UnixConn) (int32, error) {
			id := filepath.Base(filepath.Dir(c.LocalAddr().String()))
			for i, s := range simContainers {
				if s == id {
					return int32(i + 1), nil
				}
			}
			return 0, fmt.Errorf("unknown socket %s", c.LocalAddr())
		},
		PeerCgroup: func(pid int32) (string, error) {
			return "0::/lxc.payload." + simContainers[pid-1] + "\n", nil
		},
		PeerRoot: func(*net.UnixConn, int32, time.Time) error { return nil }, // simulated guests are root
	})
	a, err := hostagent.New(cfg, hostagent.Options{Runtime: allRunning{}, Guests: reg, Log: log.Discard(), Name: name})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(ip.String(), "0"))
	if err != nil {
		return nil, err
	}
	f.wg.Add(2)
	go func() { defer f.wg.Done(); _ = reg.Run(ctx) }()
	go func() { defer f.wg.Done(); _ = a.ServeControllers(ctx, tls.NewListener(ln, tc)) }()
	h := &SimHost{Name: name, Addr: ln.Addr().String(), agent: a, guests: reg}
	for _, id := range simContainers {
		sock, err := reg.Ensure(id)
		if err != nil {
			return nil, err
		}
		reg.SetExpectation(id, simExpectation())
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		s, err := connectGuest(cctx, filepath.Join(sock, guestchan.SocketName), id)
		ccancel()
		if err != nil {
			return nil, err
		}
		f.conns = append(f.conns, s)
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		_, err = reg.Wait(wctx, id, func(s guestchan.Snapshot) bool { return s.Report != nil })
		wcancel()
		if err != nil {
			return nil, fmt.Errorf("guest %s never reported: %w", id, err)
		}
	}
	return h, nil
}

// connectGuest is a guest agent's session, reduced to its wire traffic: Hello, the
// expectation, one ready report.
func connectGuest(ctx context.Context, socket, id string) (*wire.Session, error) {
	conn, err := net.Dial("unix", socket)
	if err != nil {
		return nil, err
	}
	s, err := wire.Client(ctx, conn, wire.Config{Role: pb.Role_ROLE_GUEST_AGENT, ContainerID: id, Build: "bench", Log: log.Discard()}, nil)
	if err != nil {
		conn.Close()
		return nil, err
	}
	st, err := s.Open(ctx, guestchan.Method)
	if err != nil {
		s.Close()
		return nil, err
	}
	exp := &pb.Expectation{}
	if err := st.RecvReply(exp); err != nil {
		s.Close()
		return nil, err
	}
	if err := st.Send(readyReport(id, 1)); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// readyReport is what a guest with one simulated GPU reports.
func readyReport(id string, seq uint64) *pb.GuestReport {
	r := &pb.GuestReport{
		ContainerId: id, BootId: "8c1f7a52-3b8e-4f0c-9d7e-2a5b6c7d8e9f", AgentBuild: "bench", Seq: seq,
		TimeUnixNano: time.Now().UnixNano(), Ready: true, Trigger: "heartbeat",
		Driver:  &pb.DriverVersions{Kernel: "580.159.04", Userspace: "580.159.04", UserspacePath: "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.580.159.04"},
		Network: &pb.Network{Ok: true, DefaultRoute: true, Links: []*pb.NetLink{{Name: "eth0", Up: true, Addresses: []string{"10.0.0.12/24"}}}},
	}
	for _, d := range []struct {
		path         string
		major, minor uint32
	}{{"/dev/nvidia0", 7, 0}, {"/dev/nvidiactl", 7, 128}, {"/dev/nvidia-uvm", 10, 229}, {"/dev/nvidia-uvm-tools", 10, 200}} {
		r.Devices = append(r.Devices, &pb.DeviceCheck{Path: d.path, Status: pb.DeviceStatus_DEVICE_STATUS_OK, Major: d.major, Minor: d.minor})
	}
	return r
}

// simExpectation is what the agent tells the guest of a container with GPU 0 to check.
func simExpectation() *pb.Expectation {
	exp := &pb.Expectation{DriverLoaded: true, KernelDriverVersion: "580.159.04"}
	for _, d := range readyReport("", 0).GetDevices() {
		exp.Devices = append(exp.Devices, &pb.ExpectedDevice{Path: d.GetPath(), Major: d.GetMajor(), Minor: d.GetMinor()})
	}
	return exp
}

// allRunning is the stand-in runtime of a simulated host: every container runs.
type allRunning struct{}

var errNotHere = errors.New("not part of the benchmark's stand-in runtime")

func (allRunning) Name() string { return "lxc" }
func (allRunning) State(context.Context, string) (runtime.State, error) {
	return runtime.State{Running: true, InitPID: os.Getpid()}, nil
}
func (allRunning) Start(context.Context, string) error   { return errNotHere }
func (allRunning) Stop(context.Context, string) error    { return errNotHere }
func (allRunning) Restart(context.Context, string) error { return errNotHere }
func (allRunning) ConfigPath(id string) string           { return "/nonexistent/" + id }
func (allRunning) ConfigFormat() runtime.Format          { return runtime.FormatLXC }
func (allRunning) StartedConfig(context.Context, string, runtime.State) ([]byte, error) {
	return nil, runtime.ErrNoStartedConfig
}
func (allRunning) LockPath(id string) string { return "/nonexistent/" + id + ".lock" }
