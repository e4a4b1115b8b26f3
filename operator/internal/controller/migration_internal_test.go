package controller

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestEventNote(t *testing.T) {
	var lines []string
	for i := range 40 {
		lines = append(lines, fmt.Sprintf("%s line %02d", strings.Repeat("x", 60), i))
	}
	tail := strings.Join(lines, "\n")
	tests := []struct {
		name, summary, tail string
		wantEnd             string
	}{
		{"short: all of it", "job failed; last lines:", "one\ntwo", "one\ntwo"},
		{"long tail: the last whole lines", "job failed; last lines:", tail, lines[len(lines)-1]},
		{"no tail", "job failed; logs unavailable: no kubelet", "", "no kubelet"},
		{"a summary over the limit is cut", strings.Repeat("s", 2000), tail, "..."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := eventNote(tt.summary, tt.tail)
			if len(got) > eventNoteLimit {
				t.Fatalf("%d bytes", len(got))
			}
			if !strings.HasSuffix(got, tt.wantEnd) {
				t.Fatalf("ends %q", got[max(0, len(got)-80):])
			}
			if tt.tail == tail && !strings.HasPrefix(tt.summary, "s") {
				if !strings.HasPrefix(got, tt.summary+"\n") || strings.Contains(got, lines[0]) {
					t.Fatalf("not the summary and the last lines: %q", got)
				}
				for _, l := range strings.Split(strings.TrimPrefix(got, tt.summary+"\n"), "\n") {
					if len(l) != len(lines[0]) {
						t.Fatalf("a cut line %q", l)
					}
				}
			}
		})
	}
}

func TestRetryDelay(t *testing.T) {
	r := &Reconciler{MigrationRetryBase: time.Minute, MigrationRetryMax: 10 * time.Minute}
	want := []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 8 * time.Minute, 10 * time.Minute, 10 * time.Minute}
	for i, w := range want {
		if got := r.retryDelay(i + 1); got != w {
			t.Fatalf("attempt %d: %s, want %s", i+1, got, w)
		}
	}
	if got := (&Reconciler{}).retryDelay(100); got != DefaultMigrationRetryMax {
		t.Fatalf("defaults: %s", got)
	}
}

func TestRedact(t *testing.T) {
	dsn := "gochat:s3cret@pw@tcp(db:3306)/gochat"
	if p := dsnPassword(dsn); p != "s3cret@pw" {
		t.Fatalf("password %q", p)
	}
	got := redact("open "+dsn+" failed; password s3cret@pw", dsn, dsnPassword(dsn))
	if strings.Contains(got, "s3cret") || !strings.Contains(got, "<dsn>") {
		t.Fatalf("redacted %q", got)
	}
}
