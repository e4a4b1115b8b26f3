package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"
)

func TestSummarizeSyncs(t *testing.T) {
	lat := make([]time.Duration, 1000)
	for i := range lat {
		lat[len(lat)-1-i] = time.Duration(i+1) * time.Millisecond // given in reverse: the summary sorts
	}
	r := summarizeSyncs(lat)
	want := diskResult{n: 1000, p50: 500 * time.Millisecond, p90: 900 * time.Millisecond, p99: 990 * time.Millisecond,
		p999: 999 * time.Millisecond, max: 1000 * time.Millisecond, over: 960}
	if r != want {
		t.Fatalf("summarizeSyncs = %+v\nwant %+v", r, want)
	}
	var b bytes.Buffer
	r.print(&b, "/data")
	if got := b.String(); !strings.Contains(got, "disk (/data): 1000 fsyncs of 4 KiB: p50 500.00 ms, p90 900.00, p99 990.00, p99.9 999.00, max 1000.00; 960 over 40ms") {
		t.Fatalf("printed %q", got)
	}
}

func TestMeasureSyncs(t *testing.T) {
	dir := t.TempDir()
	r, err := measureSyncs(dir, 20, 0)
	if err != nil {
		t.Fatal(err)
	}
	if r.n != 20 || r.max <= 0 || r.p50 > r.p99 {
		t.Fatalf("measureSyncs = %+v", r)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Fatalf("the probe left %d files in %s", len(left), dir)
	}
	if _, err := measureSyncs(dir+"/missing", 1, 0); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("a missing directory: %v", err)
	}
}
