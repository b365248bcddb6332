package wire

import (
	"bufio"
	"net"

	"github.com/hashicorp/yamux"

	pb "gpupass/proto/gpupass/v1"
)

// rawHello speaks the client half of the handshake with an arbitrary Hello.
func rawHello(conn net.Conn, hello *pb.Hello) (*pb.HelloReply, error) {
	ys, err := yamux.Client(conn, yamuxConfig(Config{}.withDefaults()))
	if err != nil {
		return nil, err
	}
	defer ys.Close()
	st, err := ys.OpenStream()
	if err != nil {
		return nil, err
	}
	if err := WriteFrame(st, hello, 0); err != nil {
		return nil, err
	}
	var rep pb.HelloReply
	err = ReadFrame(bufio.NewReader(st), &rep, 0)
	return &rep, err
}

// rawServerHello answers any Hello with rep.
func rawServerHello(conn net.Conn, rep *pb.HelloReply) {
	ys, err := yamux.Server(conn, yamuxConfig(Config{}.withDefaults()))
	if err != nil {
		return
	}
	defer ys.Close()
	st, err := ys.AcceptStream()
	if err != nil {
		return
	}
	var h pb.Hello
	if ReadFrame(bufio.NewReader(st), &h, 0) == nil {
		_ = WriteFrame(st, rep, 0)
	}
	var b [1]byte
	_, _ = st.Read(b[:]) // until the client goes away
}
