package hostagent

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"gpupass/internal/hostconfig"
	"gpupass/internal/wire"
	pb "gpupass/proto/gpupass/v1"
)

// The controller listener of the real daemon (Service.Run builds it from host-agent.yaml
// with pki.ServerTLS) admits only TLS 1.3 clients whose certificate chains to the fleet
// CA, and on it only the controller role. Each case dials 127.0.0.1 for real.

// refusedTLS dials with tc, expects the session to fail, and expects the agent to log the
// refused handshake with serverReason.
func refusedTLS(t *testing.T, p testPKI, tc *tls.Config, serverReason string) {
	t.Helper()
	f := startService(t, p)
	sess, err := dialController(f.addr, tc, pb.Role_ROLE_CONTROLLER)
	if err == nil {
		sess.Close()
		t.Fatal("the host agent accepted the session")
	}
	t.Logf("client: %v", err)
	line, ok := f.logs.waitLog(5*time.Second, "controller TLS handshake refused", serverReason)
	if !ok {
		t.Fatalf("no refusal naming %q in the host agent's log", serverReason)
	}
	t.Logf("host agent: %s", line)
	// The refusal did not take the listener down: the fleet's controller still gets in.
	assertControllerServed(t, f)
}

// assertControllerServed checks that a controller with a fleet certificate gets an answer.
func assertControllerServed(t *testing.T, f *serviceFixture) {
	t.Helper()
	sess, err := dialController(f.addr, f.pki.clientTLS(t, f.pki.dir, "controller"), pb.Role_ROLE_CONTROLLER)
	if err != nil {
		t.Fatalf("the fleet controller was refused: %v", err)
	}
	defer sess.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var resp pb.StatusResponse
	if err := sess.Call(ctx, "host.Status", &pb.StatusRequest{}, &resp); err != nil {
		t.Fatalf("host.Status: %v", err)
	}
	if resp.GetHost().GetRuntime() != "mem" {
		t.Errorf("host.Status answered runtime %q, want the agent's (mem)", resp.GetHost().GetRuntime())
	}
}

func TestTLSAcceptsFleetController(t *testing.T) {
	f := startService(t, newTestPKI(t))
	assertControllerServed(t, f)
	if _, ok := f.logs.waitLog(0, "refused"); ok {
		t.Errorf("a refusal was logged for the fleet's controller:\n%s", f.logs.String())
	}
}

func TestTLSRefusesNoClientCertificate(t *testing.T) {
	p := newTestPKI(t)
	tc := p.clientTLS(t, p.dir, "controller")
	tc.Certificates = nil
	refusedTLS(t, p, tc, "client didn't provide a certificate")
}

func TestTLSRefusesCertificateFromAnotherCA(t *testing.T) {
	p := newTestPKI(t)
	// The intruder trusts the fleet CA (so it gets as far as presenting its certificate),
	// but its own certificate is signed by another CA.
	refusedTLS(t, p, p.clientTLS(t, p.other, "intruder"), "certificate signed by unknown authority")
}

func TestTLSRefusesExpiredCertificate(t *testing.T) {
	p := newTestPKI(t)
	refusedTLS(t, p, p.clientTLS(t, p.dir, "expired"), "certificate has expired")
}

func TestTLSRefusesTLS12(t *testing.T) {
	p := newTestPKI(t)
	tc := p.clientTLS(t, p.dir, "controller")
	tc.MinVersion, tc.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	refusedTLS(t, p, tc, "client offered only unsupported versions")
}

// TestTLSRefusesPlaintext: a controller that skips TLS and sends the yamux session and a
// valid Hello in the clear gets no Hello reply; the agent closes the connection.
func TestTLSRefusesPlaintext(t *testing.T) {
	f := startService(t, newTestPKI(t))
	conn, err := net.DialTimeout("tcp", f.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	cfg.EnableKeepAlive = false
	ys, err := yamux.Client(conn, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ys.Close()
	// The agent may close the connection before the Hello is even written: any step may
	// fail, but none may time out, and no Hello reply may come back.
	err = func() error {
		st, err := ys.OpenStream()
		if err != nil {
			return err
		}
		hello := &pb.Hello{Magic: wire.Magic, ProtocolVersion: wire.ProtocolVersion, Role: pb.Role_ROLE_CONTROLLER, Build: "plaintext"}
		if err := wire.WriteFrame(st, hello, 0); err != nil {
			return err
		}
		_ = st.SetReadDeadline(time.Now().Add(5 * time.Second))
		var rep pb.HelloReply
		if err := wire.ReadFrame(bufio.NewReader(st), &rep, 0); err != nil {
			return err
		}
		t.Fatalf("plaintext Hello answered: accepted=%v reason=%q", rep.GetAccepted(), rep.GetReason())
		return nil
	}()
	if err == nil || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("plaintext Hello: %v; want the connection closed by the agent, not left hanging", err)
	}
	t.Logf("client: %v", err)
	if _, ok := f.logs.waitLog(5*time.Second, "controller TLS handshake refused", "does not look like a TLS handshake"); !ok {
		t.Fatal("no refusal of the plaintext connection in the host agent's log")
	}
	assertControllerServed(t, f)
}

// TestTLSRefusesGuestRole: a valid fleet certificate over TLS, but a Hello with the guest
// agent's role, is refused with a reason: the controller listener serves controllers only.
func TestTLSRefusesGuestRole(t *testing.T) {
	for _, role := range []pb.Role{pb.Role_ROLE_GUEST_AGENT, pb.Role_ROLE_HOST_AGENT, pb.Role_ROLE_UNSPECIFIED} {
		t.Run(role.String(), func(t *testing.T) {
			f := startService(t, newTestPKI(t))
			sess, err := dialController(f.addr, f.pki.clientTLS(t, f.pki.dir, "controller"), role)
			if err == nil {
				sess.Close()
				t.Fatalf("a %v Hello was accepted on the controller listener", role)
			}
			if !strings.Contains(err.Error(), "this listener serves controllers, not "+role.String()) {
				t.Fatalf("refusal %q does not say why", err)
			}
			if _, ok := f.logs.waitLog(5*time.Second, "controller session refused"); !ok {
				t.Error("the refusal is not in the host agent's log")
			}
			assertControllerServed(t, f)
		})
	}
}

// rawClientTLS presents any certificate of dir, whatever its role: what a host's key (or an
// old certificate) would do if someone pointed a controller at it. pki.ClientTLS refuses
// such certificates itself.
func rawClientTLS(t *testing.T, p testPKI, name string) *tls.Config {
	t.Helper()
	c, k := p.pair(name)
	cert, err := tls.LoadX509KeyPair(c, k)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(p.ca())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: "127.0.0.1"}
}

// A host's certificate (signed by the fleet CA, valid) is not a controller: the agent
// refuses it, so one compromised host cannot drive every other host.
func TestTLSRefusesHostCertificateAsController(t *testing.T) {
	p := newTestPKI(t)
	refusedTLS(t, p, rawClientTLS(t, p, "host"), "certificate specifies an incompatible key usage")
}

// allowed_controllers pins the controller names: another controller certificate of the
// fleet CA is refused, the pinned one is served.
func TestTLSAllowedControllers(t *testing.T) {
	p := newTestPKI(t)
	f := startServiceWith(t, p, func(c *hostconfig.Config) { c.AllowedControllers = []string{"controller"} })
	sess, err := dialController(f.addr, p.clientTLS(t, p.dir, "ci"), pb.Role_ROLE_CONTROLLER)
	if err == nil {
		sess.Close()
		t.Fatal("a controller not in allowed_controllers was served")
	}
	if _, ok := f.logs.waitLog(5*time.Second, "controller TLS handshake refused", `check client certificate \"ci\": wrong certificate role: not in allowed_controllers`); !ok {
		t.Fatal("no refusal naming allowed_controllers in the host agent's log")
	}
	assertControllerServed(t, f)
}
