package rpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gochat/gochat/services/internal/apierror"
)

func TestErrorInterceptor(t *testing.T) {
	icpt := errorInterceptor(slog.New(slog.NewTextHandler(io.Discard, nil)))
	info := &grpc.UnaryServerInfo{FullMethod: "/x/Y"}
	tests := []struct {
		name     string
		err      error
		wantCode codes.Code
		wantMsg  string
		wantAPI  apierror.Code
	}{
		{"api error passes with its code", apierror.New(apierror.NotFound, "conversation not found"), codes.NotFound, "conversation not found", apierror.NotFound},
		{"wrapped api error keeps only its message", fmt.Errorf("store: %w", apierror.New(apierror.PayloadTooLarge, "too big")), codes.InvalidArgument, "too big", apierror.PayloadTooLarge},
		{"other errors are hidden", errors.New("dial tcp 10.0.0.1:3306: password=hunter2"), codes.Internal, "internal error", apierror.Internal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := icpt(context.Background(), nil, info, func(context.Context, any) (any, error) { return nil, tt.err })
			st, _ := status.FromError(err)
			if st.Code() != tt.wantCode || st.Message() != tt.wantMsg || apierror.From(err).Code != tt.wantAPI {
				t.Fatalf("got %s %q (%s)", st.Code(), st.Message(), apierror.From(err).Code)
			}
		})
	}
	if _, err := icpt(context.Background(), nil, info, func(context.Context, any) (any, error) { return "ok", nil }); err != nil {
		t.Fatal(err)
	}
}
