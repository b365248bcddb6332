package wire

import (
	"context"
	"encoding/binary"
	"net"
	"path/filepath"
	"testing"
	"time"

	pb "gpupass/proto/gpupass/v1"
)

// TestServerHelloStalledFrame: a peer on a real unix socket opens the Hello stream, sends a
// yamux data frame header announcing more bytes than it sends, and stalls. The server
// gives up at the Hello deadline (not at yamux's keepalive, about 25 s later), so the
// handshake slot the peer holds is freed in time. Regression of FuzzServerSession's
// testdata/fuzz/FuzzServerSession/4a434eb29e41ef8e.
func TestServerHelloStalledFrame(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	// yamux headers: version 0, type, flags, stream id, length.
	hdr := func(typ byte, flags uint16, id, length uint32) []byte {
		b := []byte{0, typ, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
		binary.BigEndian.PutUint16(b[2:], flags)
		binary.BigEndian.PutUint32(b[4:], id)
		binary.BigEndian.PutUint32(b[8:], length)
		return b
	}
	msg := append(hdr(1, 1, 1, 0), hdr(0, 0, 1, 100)...) // SYN of stream 1, then 100 bytes announced
	msg = append(msg, 0x18, 0x0a)                        // ... of which two arrive
	if _, err := peer.Write(msg); err != nil {
		t.Fatal(err)
	}
	const hello = 300 * time.Millisecond
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := Server(context.Background(), conn, Config{Role: pb.Role_ROLE_HOST_AGENT, HelloTimeout: hello}, NewMux())
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a stalled Hello was accepted")
		}
		if d := time.Since(start); d > 5*hello {
			t.Errorf("the server gave up after %v, want about the Hello deadline %v", d, hello)
		}
		t.Logf("refused after %v: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(10 * time.Second):
		t.Fatal("the server still waits for a stalled Hello after 10s")
	}
}
