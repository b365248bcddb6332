// Package wire is gpupass's transport: a yamux session over any net.Conn (TLS, unix
// socket, pipe), a Hello handshake with a protocol-version check, one stream per call, and
// frames made of a uvarint length and one protobuf message, capped in size.
package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"
)

// DefaultMaxFrame caps one frame's body.
const DefaultMaxFrame = 4 << 20

var (
	// ErrFrameTooLarge is returned for a frame whose declared length exceeds the cap.
	ErrFrameTooLarge = errors.New("frame too large")
	// ErrMalformedFrame is returned for a bad length prefix or an undecodable body.
	ErrMalformedFrame = errors.New("malformed frame")
)

// WriteFrame writes m as one frame.
func WriteFrame(w io.Writer, m proto.Message, max int) error {
	buf, err := AppendFrame(nil, m, max)
	if err != nil {
		return err
	}
	_, err = w.Write(buf)
	return err
}

// AppendFrame appends m as one frame to buf.
func AppendFrame(buf []byte, m proto.Message, max int) ([]byte, error) {
	if max <= 0 {
		max = DefaultMaxFrame
	}
	size := proto.Size(m)
	if size > max {
		return buf, fmt.Errorf("write frame of %d bytes (cap %d): %w", size, max, ErrFrameTooLarge)
	}
	buf = binary.AppendUvarint(buf, uint64(size))
	buf, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(buf, m)
	if err != nil {
		return buf, fmt.Errorf("marshal frame: %w", err)
	}
	return buf, nil
}

// ReadFrameBytes reads one frame's body. A clean end of stream before the first byte is
// io.EOF; one inside a frame is io.ErrUnexpectedEOF.
func ReadFrameBytes(r *bufio.Reader, max int) ([]byte, error) {
	if max <= 0 {
		max = DefaultMaxFrame
	}
	n, err := readUvarint(r)
	if err != nil {
		return nil, err
	}
	if n > uint64(max) {
		return nil, fmt.Errorf("read frame of %d bytes (cap %d): %w", n, max, ErrFrameTooLarge)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("read frame body: %w", err)
	}
	return body, nil
}

// ReadFrame reads one frame into m.
func ReadFrame(r *bufio.Reader, m proto.Message, max int) error {
	body, err := ReadFrameBytes(r, max)
	if err != nil {
		return err
	}
	if err := proto.Unmarshal(body, m); err != nil {
		return fmt.Errorf("decode %s: %w: %w", m.ProtoReflect().Descriptor().Name(), ErrMalformedFrame, err)
	}
	return nil
}

// readUvarint reads a length prefix: I/O errors pass through (io.EOF only before the
// first byte), an over-long varint is ErrMalformedFrame.
func readUvarint(r io.ByteReader) (uint64, error) {
	var x uint64
	var s uint
	for i := 0; i < binary.MaxVarintLen64; i++ {
		b, err := r.ReadByte()
		if err != nil {
			if i > 0 && errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		if b < 0x80 {
			if i == binary.MaxVarintLen64-1 && b > 1 {
				break
			}
			return x | uint64(b)<<s, nil
		}
		x |= uint64(b&0x7f) << s
		s += 7
	}
	return 0, fmt.Errorf("read frame length: %w: varint overflows 64 bits", ErrMalformedFrame)
}
