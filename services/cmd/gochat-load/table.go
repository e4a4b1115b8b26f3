package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// compareTableMain turns the result lines of `compare --out` into the
// side-by-side table of docs/benchmarks.md, with a ratio per row where
// above 1 means GoChat did better.
func compareTableMain(args []string) error {
	fs := flag.NewFlagSet("compare-table", flag.ExitOnError)
	in := fs.String("results", "", "the file compare --out appended to")
	_ = fs.Parse(args)
	if *in == "" {
		return fmt.Errorf("--results is required")
	}
	f, err := os.Open(*in)
	if err != nil {
		return err
	}
	defer f.Close()
	rows, err := readResults(f)
	if err != nil {
		return fmt.Errorf("%s: %w", *in, err)
	}
	return writeTable(os.Stdout, rows)
}

func readResults(r io.Reader) ([]compareResult, error) {
	var out []compareResult
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var res compareResult
		if err := json.Unmarshal(sc.Bytes(), &res); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if res.Server != "gochat" && res.Server != "centrifugo" {
			return nil, fmt.Errorf("line %d: server %q is neither gochat nor centrifugo", n, res.Server)
		}
		out = append(out, res)
	}
	return out, sc.Err()
}

// metric is one row of the table for a result of a kind.
type metric struct {
	name           string
	value          func(compareResult) float64
	format         func(compareResult) string
	higherIsBetter bool
}

func writeTable(w io.Writer, results []compareResult) error {
	// Pair the servers' results by label, in the order they first appear.
	type pair struct{ gochat, centrifugo *compareResult }
	var order []string
	pairs := map[string]*pair{}
	for i := range results {
		r := &results[i]
		p, ok := pairs[r.Label]
		if !ok {
			p = &pair{}
			pairs[r.Label] = p
			order = append(order, r.Label)
		}
		if r.Server == "gochat" {
			p.gochat = r
		} else {
			p.centrifugo = r
		}
	}
	fmt.Fprintln(w, "| measured | Centrifugo | GoChat | ratio (GoChat better > 1) |")
	fmt.Fprintln(w, "|---|---|---|---|")
	for _, label := range order {
		p := pairs[label]
		kind := "fanout"
		if r := firstOf(p.gochat, p.centrifugo); r.Scenario == "connect" {
			kind = "connect"
		}
		for _, m := range metricsFor(kind) {
			cell := func(r *compareResult) string {
				if r == nil {
					return "not run"
				}
				return m.format(*r)
			}
			ratio := "—"
			if p.gochat != nil && p.centrifugo != nil {
				g, c := m.value(*p.gochat), m.value(*p.centrifugo)
				if m.higherIsBetter && c > 0 {
					ratio = fmt.Sprintf("%.2f", g/c)
				} else if !m.higherIsBetter && g > 0 {
					ratio = fmt.Sprintf("%.2f", c/g)
				}
			}
			fmt.Fprintf(w, "| %s: %s | %s | %s | %s |\n", label, m.name, cell(p.centrifugo), cell(p.gochat), ratio)
		}
	}
	// What the load tool cost, so that it is seen not to be the bottleneck.
	fmt.Fprintln(w)
	// How long each side's threads waited for a CPU: on shared cores that
	// wait is latency added to every hop, and it differs between runs.
	fmt.Fprintln(w, "| run | server | started (UTC) | load average at its end | load tool CPU | per | waited for a CPU, server / tool |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, r := range results {
		per := fmt.Sprintf("received frame (%d frames)", r.ToolFrames)
		if r.Scenario == "connect" {
			per = fmt.Sprintf("connection, dialing included (%d)", r.ToolFrames)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %.1f µs | %s | %.0f / %.0f ms per s |\n", r.Label, r.Server, r.When, r.LoadAvg, r.ToolCPUUsPerF, per, r.ServerWaitMsPerSec, r.ToolWaitMsPerSec)
	}
	return nil
}

func firstOf(a, b *compareResult) *compareResult {
	if a != nil {
		return a
	}
	return b
}

func metricsFor(kind string) []metric {
	if kind == "connect" {
		return []metric{
			{"connects/s", func(r compareResult) float64 { return r.ConnectsPerSec },
				func(r compareResult) string {
					return fmt.Sprintf("%.0f/s (%d of %d)", r.ConnectsPerSec, r.Conns-r.Failed, r.Conns)
				}, true},
			{"handshake p50", func(r compareResult) float64 { return r.HandshakeP50Ms },
				func(r compareResult) string { return fmt.Sprintf("%.1f ms", r.HandshakeP50Ms) }, false},
			{"handshake p99", func(r compareResult) float64 { return r.HandshakeP99Ms },
				func(r compareResult) string { return fmt.Sprintf("%.1f ms", r.HandshakeP99Ms) }, false},
			{"server CPU per connect", func(r compareResult) float64 { return r.ServerCPUPerConnUs },
				func(r compareResult) string { return fmt.Sprintf("%.0f µs", r.ServerCPUPerConnUs) }, false},
			{"RSS per held connection", func(r compareResult) float64 { return r.RSSPerConnB },
				func(r compareResult) string { return fmt.Sprintf("%.1f KB", r.RSSPerConnB/1000) }, false},
		}
	}
	return []metric{
		{"delivered / expected", func(r compareResult) float64 { return frac(r.Delivered, r.Expected) },
			func(r compareResult) string { return fmt.Sprintf("%d / %d", r.Delivered, r.Expected) }, true},
		{"latency p50", func(r compareResult) float64 { return r.DeliverP50Ms },
			func(r compareResult) string { return fmt.Sprintf("%.1f ms", r.DeliverP50Ms) }, false},
		{"latency p99", func(r compareResult) float64 { return r.DeliverP99Ms },
			func(r compareResult) string { return fmt.Sprintf("%.1f ms", r.DeliverP99Ms) }, false},
		{"per message: first delivery p50", func(r compareResult) float64 { return r.FirstP50Ms },
			func(r compareResult) string { return fmt.Sprintf("%.1f ms", r.FirstP50Ms) }, false},
		{"per message: last delivery max", func(r compareResult) float64 { return r.LastMaxMs },
			func(r compareResult) string { return fmt.Sprintf("%.1f ms", r.LastMaxMs) }, false},
		{"server CPU (% of a core)", func(r compareResult) float64 { return r.ServerCPUPct },
			func(r compareResult) string { return fmt.Sprintf("%.0f %%", r.ServerCPUPct) }, false},
	}
}

func frac(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}
