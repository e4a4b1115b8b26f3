// Package apierror carries the client API's error codes across gRPC hops, so
// that a code chosen deep in im-repo reaches the client unchanged.
package apierror

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
)

// Code is a stable error code of the client API.
type Code string

// The codes of the client API contract.
const (
	InvalidArgument  Code = "invalid_argument"
	Unauthenticated  Code = "unauthenticated"
	PermissionDenied Code = "permission_denied"
	NotFound         Code = "not_found"
	AlreadyExists    Code = "already_exists"
	PayloadTooLarge  Code = "payload_too_large"
	RateLimited      Code = "rate_limited"
	Unavailable      Code = "unavailable"
	Internal         Code = "internal"
)

const domain = "gochat.io"

var grpcCodes = map[Code]codes.Code{
	InvalidArgument:  codes.InvalidArgument,
	Unauthenticated:  codes.Unauthenticated,
	PermissionDenied: codes.PermissionDenied,
	NotFound:         codes.NotFound,
	AlreadyExists:    codes.AlreadyExists,
	PayloadTooLarge:  codes.InvalidArgument,
	RateLimited:      codes.ResourceExhausted,
	Unavailable:      codes.Unavailable,
	Internal:         codes.Internal,
}

var httpStatus = map[Code]int{
	InvalidArgument:  http.StatusBadRequest,
	Unauthenticated:  http.StatusUnauthorized,
	PermissionDenied: http.StatusForbidden,
	NotFound:         http.StatusNotFound,
	AlreadyExists:    http.StatusConflict,
	PayloadTooLarge:  http.StatusRequestEntityTooLarge,
	RateLimited:      http.StatusTooManyRequests,
	Unavailable:      http.StatusServiceUnavailable,
	Internal:         http.StatusInternalServerError,
}

// HTTPStatus is the HTTP status the contract gives the code.
func (c Code) HTTPStatus() int {
	if s, ok := httpStatus[c]; ok {
		return s
	}
	return http.StatusInternalServerError
}

// Error is an error with a client API code. Its message is shown to clients,
// so it must say what was wrong without leaking internals.
type Error struct {
	Code    Code
	Message string
}

func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }

// New returns an error with a code and a client-facing message.
func New(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// GRPCStatus lets grpc-go send the error with its API code attached.
func (e *Error) GRPCStatus() *status.Status {
	st := status.New(grpcCodes[e.Code], e.Message)
	if withInfo, err := st.WithDetails(&errdetails.ErrorInfo{Reason: string(e.Code), Domain: domain}); err == nil {
		return withInfo
	}
	return st
}

// From finds the API error in err: an *Error in its chain, or one carried by a
// gRPC status. Anything else is internal (its text is not shown to clients),
// except timeouts and unavailable peers, which are worth a retry.
func From(err error) *Error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return New(Unavailable, "the request timed out, try again")
	}
	st, ok := status.FromError(err)
	if !ok {
		return New(Internal, "internal error")
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.Domain == domain {
			return &Error{Code: Code(info.Reason), Message: st.Message()}
		}
	}
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return New(Unavailable, "a backend service is unavailable, try again")
	case codes.ResourceExhausted:
		return New(RateLimited, "too many requests")
	default:
		return New(Internal, "internal error")
	}
}

// IsCode reports whether err carries the API code c.
func IsCode(err error, c Code) bool {
	e := From(err)
	return e != nil && e.Code == c
}

// Item is err as the error of one item of a batch answer.
func Item(err error) *gochatv1.ItemError {
	e := From(err)
	return &gochatv1.ItemError{Code: string(e.Code), Message: e.Message}
}

// FromItem is the error a batch answer gives one of its items. A code this
// build does not know is internal, its text not shown.
func FromItem(it *gochatv1.ItemError) *Error {
	if _, ok := grpcCodes[Code(it.GetCode())]; !ok {
		return New(Internal, "internal error")
	}
	return &Error{Code: Code(it.Code), Message: it.Message}
}
