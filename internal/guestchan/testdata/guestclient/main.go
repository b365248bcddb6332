// Command guestclient is a minimal guest for the LXC integration test of guestchan: it
// dials the guest socket from inside a container, says Hello claiming an id, prints the
// expectation it gets and pushes one report (claiming another container's id, which the
// host must overwrite).
//
//	guestclient SOCKET CLAIM [forge]   exit 0: accepted; 3: refused (the reason on stdout); 1: error
//
// With forge, the report is what a hostile root process would send: ready, every expected
// device present and opening, whatever the container really has.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"gpupass/internal/wire"
	pb "gpupass/proto/gpupass/v1"
)

func main() {
	if len(os.Args) != 3 && (len(os.Args) != 4 || os.Args[3] != "forge") {
		fmt.Fprintln(os.Stderr, "usage: guestclient SOCKET CLAIM [forge]")
		os.Exit(2)
	}
	code, err := run(os.Args[1], os.Args[2], len(os.Args) == 4)
	if err != nil {
		fmt.Fprintln(os.Stderr, "guestclient:", err)
	}
	os.Exit(code)
}

func run(sock, claim string, forge bool) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return 1, err
	}
	sess, err := wire.Client(ctx, conn, wire.Config{Role: pb.Role_ROLE_GUEST_AGENT, Build: "guestclient", ContainerID: claim}, nil)
	if errors.Is(err, wire.ErrRefused) {
		fmt.Printf("refused: %v\n", err)
		return 3, nil
	}
	if err != nil {
		return 1, err
	}
	defer sess.Close()
	st, err := sess.Open(ctx, "guest.Session")
	if err != nil {
		return 1, err
	}
	defer st.Close()
	var exp pb.Expectation
	if err := st.RecvReply(&exp); err != nil {
		return 1, fmt.Errorf("receive expectation: %w", err)
	}
	fmt.Printf("expectation %s devices=%d heartbeat_ms=%d\n", exp.GetContainerId(), len(exp.GetDevices()), exp.GetHeartbeatIntervalMs())
	rep := &pb.GuestReport{ContainerId: "forged", Seq: 1, Ready: true, Trigger: "connect"}
	if forge {
		for _, d := range exp.GetDevices() {
			rep.Devices = append(rep.Devices, &pb.DeviceCheck{Path: d.GetPath(), Major: d.GetMajor(), Minor: d.GetMinor(), Status: pb.DeviceStatus_DEVICE_STATUS_OK})
		}
		rep.Driver = &pb.DriverVersions{Kernel: exp.GetKernelDriverVersion()}
	}
	if err := st.Send(rep); err != nil {
		return 1, err
	}
	return 0, nil // the report is in the socket before the close that follows it
}
