package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// The "disk" scenario measures what a durable commit costs on the disk a
// database keeps its log on: it writes 4 KiB and fsyncs it, --n times,
// --every apart, and reports the latencies. A commit with
// innodb_flush_log_at_trx_commit=1 waits for one such sync, so its tail is
// the floor under the store's tail on that machine (make bench-compare prints
// it beside the results).
//
//	gochat-load disk --dir /var/lib/mysql --n 1000

type diskResult struct {
	n                        int
	p50, p90, p99, p999, max time.Duration
	over                     int // syncs over overLimit
}

const overLimit = 40 * time.Millisecond

func diskMain(args []string) error {
	fs := flag.NewFlagSet("disk", flag.ExitOnError)
	dir := fs.String("dir", os.TempDir(), "a directory on the disk to measure (the database's data directory)")
	n := fs.Int("n", 1000, "syncs to time")
	every := fs.Duration("every", 5*time.Millisecond, "pause between syncs (a commit stream, not a saturating one)")
	_ = fs.Parse(args)
	if *n < 1 {
		return fmt.Errorf("--n must be at least 1, got %d", *n)
	}
	r, err := measureSyncs(*dir, *n, *every)
	if err != nil {
		return err
	}
	r.print(os.Stdout, *dir)
	return nil
}

// measureSyncs times n fsyncs of a 4 KiB write in a file of its own in
// dir (removed after), cycling over 1 MiB of the file as a log does.
func measureSyncs(dir string, n int, every time.Duration) (diskResult, error) {
	f, err := os.CreateTemp(dir, ".gochat-load-disk-*")
	if err != nil {
		return diskResult{}, fmt.Errorf("a file to sync in %s: %w", dir, err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	block := make([]byte, 4096)
	lat := make([]time.Duration, 0, n)
	for i := range n {
		if _, err := f.WriteAt(block, int64(i%256)*4096); err != nil {
			return diskResult{}, fmt.Errorf("write %s: %w", f.Name(), err)
		}
		t := time.Now()
		if err := f.Sync(); err != nil {
			return diskResult{}, fmt.Errorf("sync %s: %w", filepath.Base(f.Name()), err)
		}
		lat = append(lat, time.Since(t))
		time.Sleep(every)
	}
	return summarizeSyncs(lat), nil
}

func summarizeSyncs(lat []time.Duration) diskResult {
	slices.Sort(lat)
	r := diskResult{n: len(lat), p50: q(lat, 0.5), p90: q(lat, 0.9), p99: q(lat, 0.99), p999: q(lat, 0.999), max: lat[len(lat)-1]}
	for _, d := range lat {
		if d > overLimit {
			r.over++
		}
	}
	return r
}

func (r diskResult) print(w io.Writer, dir string) {
	fmt.Fprintf(w, "disk (%s): %d fsyncs of 4 KiB: p50 %.2f ms, p90 %.2f, p99 %.2f, p99.9 %.2f, max %.2f; %d over %s\n",
		dir, r.n, msf(r.p50), msf(r.p90), msf(r.p99), msf(r.p999), msf(r.max), r.over, overLimit)
}

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
