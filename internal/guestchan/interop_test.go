package guestchan

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gpupass/internal/guest"
	"gpupass/internal/log"
	pb "gpupass/proto/gpupass/v1"
)

// TestGuestAgentInterop runs the real guest agent (internal/guest) against the registry:
// it gets the expectation, reports at once, heartbeats at the interval the host sets, and
// re-reports when a new expectation changes its verdict.
func TestGuestAgentInterop(t *testing.T) {
	noLeaks(t)
	cfg := testConfig(t)
	cfg.Heartbeat = 50 * time.Millisecond
	cfg.IdleTimeout = 10 * time.Second
	f := start(t, cfg)
	sock := f.ensure("901")
	f.r.SetExpectation("901", gpuExpectation(0))

	root := t.TempDir()
	for _, d := range []string{"dev", "proc"} {
		mkdir(t, filepath.Join(root, d))
	}
	pid := f.procs.inContainer("901")
	a, err := guest.New(guest.Config{
		ContainerID: "901",
		BootID:      "boot-1",
		Build:       "interop",
		Checker: &guest.Checker{
			Paths:   guest.Paths{Root: root, PathEnv: ""},
			Network: func() *pb.Network { return &pb.Network{Ok: true} },
		},
		Log:  log.ForTest(t, "guest"),
		Dial: func(context.Context) (net.Conn, error) { return dialAs(sock, pid) },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()

	s := f.waitFor("901", "the first report", func(s Snapshot) bool { return s.Report != nil })
	rep := s.Report
	if rep.GetReady() || rep.GetContainerId() != "901" || rep.GetBootId() != "boot-1" || s.BootID != "boot-1" {
		t.Errorf("first report: ready %v container %q boot %q; want not ready, 901, boot-1", rep.GetReady(), rep.GetContainerId(), rep.GetBootId())
	}
	if !strings.Contains(strings.Join(rep.GetReasons(), "\n"), "/dev/nvidia0") {
		t.Errorf("reasons %q do not name /dev/nvidia0", rep.GetReasons())
	}
	first := rep.GetSeq()
	f.waitFor("901", "heartbeats", func(s Snapshot) bool { return s.Report.GetSeq() >= first+3 && s.Report.GetTrigger() == "heartbeat" })

	f.r.SetExpectation("901", &pb.Expectation{DriverLoaded: true})
	s = f.waitFor("901", "the report for the new expectation", func(s Snapshot) bool { return s.Report.GetReady() })
	if len(s.Report.GetDevices()) != 0 || s.Stale || !s.Connected {
		t.Errorf("after the new expectation: %+v", s)
	}
	if _, err := os.Stat(sock); err != nil {
		t.Fatal(err)
	}
}
