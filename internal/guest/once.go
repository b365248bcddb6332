package guest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"gpupass/internal/wire"
	pb "gpupass/proto/gpupass/v1"
)

// maxExpectFile caps an expectation file.
const maxExpectFile = 1 << 20

// LoadExpectation reads a JSON Expectation (protojson: field names as in the .proto or in
// lowerCamelCase; unknown fields are errors), e.g.
//
//	{"devices": [{"path": "/dev/nvidia0", "major": 195, "minor": 0}],
//	 "driver_loaded": true, "kernel_driver_version": "580.159.04",
//	 "gpus": [{"uuid": "GPU-..."}]}
func LoadExpectation(path string) (*pb.Expectation, error) {
	b, err := readLimited(path, maxExpectFile)
	if err != nil {
		return nil, fmt.Errorf("read expectation: %w", err)
	}
	exp := &pb.Expectation{}
	if err := protojson.Unmarshal(b, exp); err != nil {
		return nil, fmt.Errorf("parse expectation %s: %w (want a JSON gpupass.v1.Expectation)", path, err)
	}
	return exp, nil
}

// BootID reads /proc/sys/kernel/random/boot_id ("" when unreadable).
func (p Paths) BootID() string {
	p = p.withDefaults()
	b, err := readLimited(p.host(p.Proc+"/sys/kernel/random/boot_id"), 256)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// Once connects to the host agent, takes its expectation, checks everything once
// (nvidia-smi included), sends the report (trigger "once") and returns it. It fails when
// the host agent cannot be reached or does not hand out an expectation in time.
func (a *Agent) Once(ctx context.Context, timeout time.Duration) (*pb.GuestReport, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := a.cfg.Dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("dial host agent: %w", err)
	}
	sess, err := wire.Client(ctx, conn, wire.Config{
		Role: pb.Role_ROLE_GUEST_AGENT, Build: a.cfg.Build, ContainerID: a.cfg.ContainerID, BootID: a.cfg.BootID,
		MaxFrame: MaxReportFrame, MaxStreams: 4, Log: a.cfg.Log,
	}, nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("say hello to host agent: %w", err)
	}
	defer sess.Close()
	st, err := sess.Open(ctx, Method)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", Method, err)
	}
	defer st.Close()
	exp := &pb.Expectation{}
	if err := st.RecvReply(exp); err != nil {
		if ctx.Err() != nil {
			err = errors.Join(ctx.Err(), err)
		}
		return nil, fmt.Errorf("receive expectation: %w", err)
	}
	r := a.cfg.Checker.Check(ctx, exp)
	r.ContainerId, r.BootId, r.AgentBuild = a.cfg.ContainerID, a.cfg.BootID, a.cfg.Build
	r.Trigger, r.Seq, r.TimeUnixNano = TriggerOnce, a.seq.Add(1), time.Now().UnixNano()
	if err := st.Send(r); err != nil {
		a.cfg.Log.WithError(err).Warn("could not send the report to the host agent")
	}
	return r, nil
}

// DefaultContainerID is the id claimed when none is given: $GPUPASS_CONTAINER_ID, else
// the hostname. The host agent decides identity from the kernel (the peer's cgroup) and
// the socket directory; a claim that differs (on Proxmox the hostname is any name) is
// logged at debug level and never refused.
func DefaultContainerID() string {
	if id := strings.TrimSpace(os.Getenv("GPUPASS_CONTAINER_ID")); id != "" {
		return id
	}
	h, _ := os.Hostname()
	return h
}
