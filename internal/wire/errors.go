package wire

import (
	"context"
	"errors"
	"fmt"
	"io"

	pb "gpupass/proto/gpupass/v1"
)

var (
	// ErrIncompatibleProtocol is returned when the peer speaks another protocol version.
	ErrIncompatibleProtocol = errors.New("incompatible protocol")
	// ErrRefused is returned when the peer refused the Hello.
	ErrRefused = errors.New("refused by peer")
	// ErrClosed is returned for calls on a closed session.
	ErrClosed = errors.New("session closed")
)

// Error is a failure answered by the callee of a stream.
type Error struct {
	Code    pb.ErrorCode
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: %s", codeName(e.Code), e.Message)
}

// Errorf builds an *Error.
func Errorf(code pb.ErrorCode, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

func codeName(c pb.ErrorCode) string {
	switch c {
	case pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT:
		return "invalid argument"
	case pb.ErrorCode_ERROR_CODE_NOT_FOUND:
		return "not found"
	case pb.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE:
		return "frame too large"
	case pb.ErrorCode_ERROR_CODE_MALFORMED_FRAME:
		return "malformed frame"
	case pb.ErrorCode_ERROR_CODE_UNKNOWN_METHOD:
		return "unknown method"
	case pb.ErrorCode_ERROR_CODE_DEADLINE_EXCEEDED:
		return "deadline exceeded"
	case pb.ErrorCode_ERROR_CODE_PERMISSION_DENIED:
		return "permission denied"
	case pb.ErrorCode_ERROR_CODE_CONFLICT:
		return "conflict"
	case pb.ErrorCode_ERROR_CODE_UNAVAILABLE:
		return "unavailable"
	case pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED:
		return "resource exhausted"
	default:
		return "internal error"
	}
}

// toPB turns any error into the Error frame sent to the peer.
func toPB(err error) *pb.Error {
	var we *Error
	switch {
	case errors.As(err, &we):
		return &pb.Error{Code: we.Code, Message: we.Message}
	case errors.Is(err, ErrFrameTooLarge):
		return &pb.Error{Code: pb.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE, Message: err.Error()}
	case errors.Is(err, ErrMalformedFrame), errors.Is(err, io.ErrUnexpectedEOF):
		return &pb.Error{Code: pb.ErrorCode_ERROR_CODE_MALFORMED_FRAME, Message: err.Error()}
	case errors.Is(err, context.DeadlineExceeded):
		return &pb.Error{Code: pb.ErrorCode_ERROR_CODE_DEADLINE_EXCEEDED, Message: err.Error()}
	default:
		return &pb.Error{Code: pb.ErrorCode_ERROR_CODE_INTERNAL, Message: err.Error()}
	}
}

// CodeOf returns the wire code of err, or UNSPECIFIED when err is not an *Error.
func CodeOf(err error) pb.ErrorCode {
	var we *Error
	if errors.As(err, &we) {
		return we.Code
	}
	return pb.ErrorCode_ERROR_CODE_UNSPECIFIED
}
