package wire

import (
	"encoding/binary"
	"net"
)

// coalescingConn sends a yamux data frame's 12-byte header and its body in one write.
// yamux's send loop writes them separately, which costs a syscall and, on the other side,
// a wake-up per frame; small calls are dominated by that. Only the send loop writes to the
// connection, so no lock is needed. The header layout is yamux's wire format (spec.md):
// version(1) type(1) flags(2) stream id(4) length(4), type 0 = data.
type coalescingConn struct {
	net.Conn
	hdr  [12]byte
	held bool
	buf  []byte
}

const yamuxHeaderSize = 12

func (c *coalescingConn) Write(p []byte) (int, error) {
	if !c.held && len(p) == yamuxHeaderSize && p[0] == 0 && p[1] == 0 && binary.BigEndian.Uint32(p[8:12]) > 0 {
		// A data frame's header: its body is the very next write.
		copy(c.hdr[:], p)
		c.held = true
		return len(p), nil
	}
	if !c.held {
		return c.Conn.Write(p)
	}
	c.held = false
	c.buf = append(append(c.buf[:0], c.hdr[:]...), p...)
	n, err := c.Conn.Write(c.buf)
	n -= yamuxHeaderSize
	if n < 0 {
		n = 0
	}
	if cap(c.buf) > 64<<10 {
		c.buf = nil // do not keep a large frame's buffer
	}
	return n, err
}
