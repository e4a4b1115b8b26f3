// Command gochat-load puts load on a running GoChat through its public client
// API. The "idle" scenario measures what held connections cost a gateway:
// it opens --conns WebSocket sessions for --users guest users, holds them
// for --hold, and reads the gateway's own process metrics before and after.
// The "send" scenario measures the send path: pairs of users send to each
// other at a fixed rate and it reports acks, deliveries and their latencies.
// The "roll" scenario holds clients over several gateways while they are
// drained one after another (--admin) or rolled by someone else, and reports
// reconnects, messages lost and duplicated, and latency before and during.
// The "compare" scenario measures GoChat or Centrifugo the same way through an
// adapter per server (connect rate and idle memory, fan-out, 10,000 sessions);
// "compare-table" turns its results into the side-by-side table
// (hack/bench-compare.sh runs both servers). The "disk" scenario times the
// fsyncs a durable commit waits for on the database's disk.
//
//	gochat-load idle --url http://127.0.0.1:8080 --conns 19000 --users 200
//	gochat-load send --url http://127.0.0.1:8080 --pairs 100 --rate 50 --duration 20s
//	gochat-load roll --urls http://127.0.0.1:8080,http://127.0.0.1:8081 --admin 127.0.0.1:9000,127.0.0.1:9100 --clients 2000
//	gochat-load compare --server centrifugo --url http://127.0.0.1:8000 --scenario fanout --members 5000 --rate 5
//	gochat-load disk --dir /var/lib/mysql --n 1000
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws/wsutil"
)

func main() {
	scenarios := map[string]func([]string) error{"send": sendMain, "roll": rollMain, "compare": compareMain, "compare-table": compareTableMain, "disk": diskMain}
	if len(os.Args) < 2 || (os.Args[1] != "idle" && scenarios[os.Args[1]] == nil) {
		fmt.Fprintln(os.Stderr, "usage: gochat-load idle|send|roll|compare|compare-table|disk [flags]  (gochat-load <scenario> -h for the flags)")
		os.Exit(2)
	}
	if run := scenarios[os.Args[1]]; run != nil {
		if err := run(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "gochat-load:", err)
			os.Exit(1)
		}
		return
	}
	fs := flag.NewFlagSet("idle", flag.ExitOnError)
	url := fs.String("url", "http://127.0.0.1:8080", "the gateway's base URL")
	metricsURL := fs.String("metrics-url", "http://127.0.0.1:9100", "base URL of the gateway's metrics address (its --metrics-addr)")
	conns := fs.Int("conns", 1000, "WebSocket sessions to open")
	users := fs.Int("users", 100, "guest users the sessions are spread over")
	parallel := fs.Int("parallel", 64, "handshakes in flight at once")
	hold := fs.Duration("hold", 10*time.Second, "how long to hold the sessions before measuring again")
	ping := fs.Duration("ping", 20*time.Second, "each session sends a ping this often, as an idle client does (0: never)")
	_ = fs.Parse(os.Args[2:])
	if err := idle(*url, *metricsURL, *conns, *users, *parallel, *hold, *ping); err != nil {
		fmt.Fprintln(os.Stderr, "gochat-load:", err)
		os.Exit(1)
	}
}

type metrics struct{ rss, heap, goroutines, sessions float64 }

// scrape reads the gateway's own gauges from /metrics on its metrics address.
func scrape(base string) (metrics, error) {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return metrics{}, err
	}
	defer resp.Body.Close()
	var m metrics
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			continue
		}
		switch name {
		case "process_resident_memory_bytes":
			m.rss = v
		case "go_memstats_heap_inuse_bytes":
			m.heap = v
		case "go_goroutines":
			m.goroutines = v
		case "gochat_gateway_sessions":
			m.sessions = v
		}
	}
	return m, sc.Err()
}

func idle(base, metricsBase string, n, users, parallel int, hold, ping time.Duration) error {
	tokens := make([]string, users)
	for i := range tokens {
		g, err := newGuest(base, i)
		if err != nil {
			return err
		}
		tokens[i] = g.token
	}
	time.Sleep(time.Second)
	before, err := scrape(metricsBase)
	if err != nil {
		return fmt.Errorf("scrape before: %w", err)
	}
	held := make([]net.Conn, n)
	var failed atomic.Int64
	var firstErr atomic.Value
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, err := dialWS(base, tokens[i%users])
			if err == nil {
				_ = c.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
				var msg []byte
				msg, err = wsutil.ReadServerText(c.r)
				if err == nil && !bytes.Contains(msg, []byte(`"hello"`)) {
					err = errors.New("first frame is not hello")
				}
				_ = c.conn.SetReadDeadline(time.Time{})
				if err != nil {
					c.conn.Close()
				}
			}
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err)
				return
			}
			conn := c.conn
			held[i] = conn
		}()
	}
	wg.Wait()
	took := time.Since(start)
	ok := n - int(failed.Load())
	fmt.Printf("opened %d of %d sessions in %s (%.0f/s), %d failed", ok, n, took.Round(time.Millisecond), float64(ok)/took.Seconds(), failed.Load())
	if e := firstErr.Load(); e != nil {
		fmt.Printf(" (first error: %v)", e)
	}
	fmt.Println()
	// Hold, pinging like idle clients do; the pongs are not read (a client's
	// socket buffer absorbs them), which is what an idle client costs.
	pingFrame := []byte(`{"type":"ping","data":{}}`)
	end := time.Now().Add(hold)
	for ping > 0 && time.Now().Add(ping).Before(end) {
		time.Sleep(ping)
		for _, c := range held {
			if c != nil {
				_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
				_ = wsutil.WriteClientText(c, pingFrame)
			}
		}
	}
	time.Sleep(time.Until(end))
	after, err := scrape(metricsBase)
	if err != nil {
		return fmt.Errorf("scrape after: %w", err)
	}
	per := func(a, b float64) float64 { return (a - b) / float64(ok) }
	fmt.Printf("gateway sessions: %.0f -> %.0f\n", before.sessions, after.sessions)
	fmt.Printf("gateway RSS:      %.1f MiB -> %.1f MiB, %.0f bytes per session\n", before.rss/(1<<20), after.rss/(1<<20), per(after.rss, before.rss))
	fmt.Printf("gateway Go heap:  %.1f MiB -> %.1f MiB, %.0f bytes per session\n", before.heap/(1<<20), after.heap/(1<<20), per(after.heap, before.heap))
	fmt.Printf("goroutines:       %.0f -> %.0f\n", before.goroutines, after.goroutines)
	for _, c := range held {
		if c != nil {
			c.Close()
		}
	}
	return nil
}
