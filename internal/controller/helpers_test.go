package controller

import (
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"

	"gpupass/internal/controller/agenttest"
	"gpupass/internal/fleet"
	"gpupass/internal/log"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// env is a fleet of fake hosts.
type env struct {
	pki    *agenttest.PKI
	fleet  *fleet.Fleet
	agents map[string]*agenttest.Agent
}

func newEnv(t testing.TB) *env {
	return &env{pki: agenttest.NewPKI(t), fleet: &fleet.Fleet{Version: 1}, agents: map[string]*agenttest.Agent{}}
}

// host starts a fake agent on loopback and adds it to the fleet.
func (e *env) host(t testing.TB, a *agenttest.Agent) *agenttest.Agent {
	a.Log = log.ForTest(t, "agent-"+a.Name)
	addr := a.Serve(t, agenttest.Listen(t, ""), e.pki.HostTLS(t, a.Name, net.ParseIP("127.0.0.1")))
	e.fleet.Hosts = append(e.fleet.Hosts, fleet.Host{Name: a.Name, Address: addr, ServerName: "127.0.0.1"})
	e.agents[a.Name] = a
	return a
}

// deadHost adds a fleet host at addr with no agent behind it.
func (e *env) deadHost(name, addr string) {
	e.fleet.Hosts = append(e.fleet.Hosts, fleet.Host{Name: name, Address: addr, ServerName: "127.0.0.1"})
}

func (e *env) container(host, id string, gpus ...string) {
	if gpus == nil {
		gpus = []string{}
	}
	e.fleet.Containers = append(e.fleet.Containers, fleet.Container{Host: host, ID: id, GPUs: gpus, Style: fleet.StyleRaw})
}

func (e *env) controller(t testing.TB, timeout time.Duration) *Controller {
	return New(Options{Fleet: e.fleet, TLS: e.pki.ClientTLS(t), Timeout: timeout, Log: log.ForTest(t, "controller")})
}
