package wire

import (
	"context"
	"sync"

	"google.golang.org/protobuf/proto"

	pb "gpupass/proto/gpupass/v1"
)

// Handler serves one stream. Returning an error sends it to the caller as an Error frame.
type Handler func(ctx context.Context, s *Stream) error

// Mux maps method names to handlers.
type Mux struct {
	mu       sync.RWMutex
	handlers map[string]Handler
}

// NewMux returns an empty Mux.
func NewMux() *Mux { return &Mux{handlers: map[string]Handler{}} }

// Handle registers h for method, replacing any earlier handler.
func (m *Mux) Handle(method string, h Handler) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.handlers[method] = h
}

func (m *Mux) lookup(method string) (Handler, bool) {
	if m == nil {
		return nil, false
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	h, ok := m.handlers[method]
	return h, ok
}

// HandleUnary registers a request/response handler: one request frame in, one Reply out.
func HandleUnary[Req any, Resp any, PReq interface {
	*Req
	proto.Message
}, PResp interface {
	*Resp
	proto.Message
}](m *Mux, method string, fn func(ctx context.Context, req PReq) (PResp, error)) {
	m.Handle(method, func(ctx context.Context, s *Stream) error {
		req := PReq(new(Req))
		if err := s.Recv(req); err != nil {
			return err
		}
		s.CancelOnPeerClose()
		resp, err := fn(ctx, req)
		if err != nil {
			return err
		}
		return s.Reply(resp)
	})
}

// HandleServerStream registers a handler that reads one request and then sends any number
// of replies with s.Reply until it returns.
func HandleServerStream[Req any, PReq interface {
	*Req
	proto.Message
}](m *Mux, method string, fn func(ctx context.Context, req PReq, s *Stream) error) {
	m.Handle(method, func(ctx context.Context, s *Stream) error {
		req := PReq(new(Req))
		if err := s.Recv(req); err != nil {
			return err
		}
		s.CancelOnPeerClose()
		return fn(ctx, req, s)
	})
}

// errUnknownMethod is answered for a method nobody registered.
func errUnknownMethod(method string) error {
	return Errorf(pb.ErrorCode_ERROR_CODE_UNKNOWN_METHOD, "no handler for method %q", method)
}
