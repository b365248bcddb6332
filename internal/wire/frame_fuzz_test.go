package wire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "gpupass/proto/gpupass/v1"
)

func FuzzReadFrame(f *testing.F) {
	good := new(bytes.Buffer)
	_ = WriteFrame(good, &pb.Hello{Magic: Magic, ProtocolVersion: 1, Role: pb.Role_ROLE_GUEST_AGENT, ContainerId: "901"}, 0)
	f.Add(good.Bytes())
	f.Add([]byte{})
	f.Add([]byte{0x80})
	f.Add(binary.AppendUvarint(nil, DefaultMaxFrame+1))
	f.Add(append(binary.AppendUvarint(nil, 3), 0x0a, 0x05, 'x'))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReader(bytes.NewReader(data))
		var h pb.Hello
		err := ReadFrame(r, &h, 1<<16)
		if err == nil {
			// A decoded frame re-encodes to a frame that decodes to the same message.
			var buf bytes.Buffer
			if err := WriteFrame(&buf, &h, 1<<16); err != nil {
				t.Fatalf("re-encode: %v", err)
			}
			var h2 pb.Hello
			if err := ReadFrame(bufio.NewReader(&buf), &h2, 1<<16); err != nil {
				t.Fatalf("re-decode: %v", err)
			}
			if !proto.Equal(&h, &h2) {
				t.Fatalf("round trip changed the message: %v vs %v", &h, &h2)
			}
			return
		}
		if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ErrFrameTooLarge) && !errors.Is(err, ErrMalformedFrame) {
			t.Fatalf("unclassified error: %v", err)
		}
	})
}
