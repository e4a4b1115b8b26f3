package apierror

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	gochatv1 "github.com/gochat/gochat/api/gen/gochat/v1"
)

func TestFrom(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		wantCode Code
		wantMsg  string
	}{
		{"nil-safe direct", New(NotFound, "conversation %s not found", "c1"), NotFound, "conversation c1 not found"},
		{"wrapped", fmt.Errorf("store: %w", New(AlreadyExists, "taken")), AlreadyExists, "taken"},
		{"over grpc", New(PayloadTooLarge, "too big").GRPCStatus().Err(), PayloadTooLarge, "too big"},
		{"plain grpc unavailable", status.Error(codes.Unavailable, "conn refused"), Unavailable, "a backend service is unavailable, try again"},
		{"deadline", context.DeadlineExceeded, Unavailable, "the request timed out, try again"},
		{"unknown error hides text", errors.New("sql: secret table"), Internal, "internal error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := From(tt.err)
			if got.Code != tt.wantCode || got.Message != tt.wantMsg {
				t.Fatalf("From() = %q %q, want %q %q", got.Code, got.Message, tt.wantCode, tt.wantMsg)
			}
		})
	}
	if From(nil) != nil {
		t.Fatal("From(nil) must be nil")
	}
}

func TestHTTPStatus(t *testing.T) {
	tests := map[Code]int{
		InvalidArgument: 400, Unauthenticated: 401, PermissionDenied: 403, NotFound: 404,
		AlreadyExists: 409, PayloadTooLarge: 413, RateLimited: 429, Unavailable: 503, Internal: 500,
		Code("bogus"): http.StatusInternalServerError,
	}
	for code, want := range tests {
		if got := code.HTTPStatus(); got != want {
			t.Errorf("%s.HTTPStatus() = %d, want %d", code, got, want)
		}
	}
}

func TestItem(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		wantCode Code
		wantMsg  string
	}{
		{"an API error crosses unchanged", New(NotFound, "conversation not found"), NotFound, "conversation not found"},
		{"an unknown error is internal, its text hidden", errors.New("sql: secret table"), Internal, "internal error"},
		{"a timeout is worth a retry", context.DeadlineExceeded, Unavailable, "the request timed out, try again"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := FromItem(Item(tt.err))
			if got.Code != tt.wantCode || got.Message != tt.wantMsg {
				t.Fatalf("got %v, want %s: %s", got, tt.wantCode, tt.wantMsg)
			}
		})
	}
	if got := FromItem(&gochatv1.ItemError{Code: "from_a_newer_build", Message: "details"}); got.Code != Internal || got.Message != "internal error" {
		t.Fatalf("an unknown code: %v, want internal", got)
	}
	if got := FromItem(nil); got.Code != Internal {
		t.Fatalf("no error at all: %v, want internal", got)
	}
}
