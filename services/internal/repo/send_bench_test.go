package repo_test

import (
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gochat/gochat/services/internal/repo"
	tc "github.com/gochat/gochat/services/testcluster"
)

// BenchmarkStoreMessage measures im-repo's send path alone, over gRPC against
// MariaDB: callers StoreMessage concurrently, one conversation each, every
// caller waiting for its ack before its next send, as a WebSocket session's
// sends do. It reports stored messages per second and the ack latency, for
// one store worker and for several (each owning a share of the
// conversations). Run it with
//
//	go test -run '^$' -bench StoreMessage -benchtime 20000x ./internal/repo/
func BenchmarkStoreMessage(b *testing.B) {
	for _, workers := range []int{1, 4} {
		for _, callers := range []int{32, 128} {
			b.Run(fmt.Sprintf("workers=%d/callers=%d", workers, callers), func(b *testing.B) {
				benchStore(b, workers, callers)
			})
		}
	}
}

func benchStore(b *testing.B, workers, callers int) {
	e := startWith(b, repo.DBConfig{MySQLDSN: tc.FreshDatabase(b), MaxOpenConns: 16},
		repo.Config{MemberCacheTTL: time.Minute, StoreWorkers: workers, StoreMaxBatch: 256, OutboxLease: time.Minute})
	type caller struct{ user, conv string }
	cs := make([]caller, callers)
	for i := range cs {
		u := user(b, e, fmt.Sprint("b", i))
		cs[i] = caller{u.Id, group(b, e, u).Id}
	}
	var (
		next    atomic.Int64
		mu      sync.Mutex
		lats    []time.Duration
		wg      sync.WaitGroup
		errOnce sync.Once
		failed  error
	)
	b.ResetTimer()
	start := time.Now()
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for n := next.Add(1); n <= int64(b.N); n = next.Add(1) {
				t0 := time.Now()
				if _, err := store(e, c.conv, c.user, fmt.Sprint("m", n)); err != nil {
					errOnce.Do(func() { failed = err })
					return
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if failed != nil {
		b.Fatal(failed)
	}
	sort.Slice(lats, func(i, j int) bool { return lats[i] < lats[j] })
	b.ReportMetric(float64(len(lats))/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(lats[len(lats)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lats[len(lats)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(0, "ns/op")
}
