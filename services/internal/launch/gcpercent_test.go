package launch

import (
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"testing"
)

func TestGatewayGCPercent(t *testing.T) {
	// The GC percent is process-wide: this test does not run in parallel.
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	const before = 100
	tests := []struct {
		name    string
		flag    int
		gogc    string // set GOGC when not empty
		wantErr bool
		want    int // the GC percent after
	}{
		{name: "flag applied", flag: 50, want: 50},
		{name: "zero keeps Go's setting", flag: 0, want: before},
		{name: "GOGC wins", flag: 50, gogc: "200", want: before},
		{name: "too low", flag: 5, wantErr: true, want: before},
		{name: "off is refused", flag: -1, wantErr: true, want: before},
		{name: "too high", flag: 5000, wantErr: true, want: before},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prev := debug.SetGCPercent(before)
			t.Cleanup(func() { debug.SetGCPercent(prev) })
			if tt.gogc != "" {
				t.Setenv("GOGC", tt.gogc)
			} else if v, ok := os.LookupEnv("GOGC"); ok {
				// The test's own environment must not decide the case.
				t.Setenv("GOGC", v)
				os.Unsetenv("GOGC")
			}
			o := &Gateway{GCPercent: tt.flag}
			err := o.setGCPercent(log)
			if (err != nil) != tt.wantErr {
				t.Fatalf("setGCPercent(%d) error %v, want error %v", tt.flag, err, tt.wantErr)
			}
			if got := debug.SetGCPercent(before); got != tt.want {
				t.Fatalf("GC percent %d after setGCPercent(%d), want %d", got, tt.flag, tt.want)
			}
		})
	}
}
