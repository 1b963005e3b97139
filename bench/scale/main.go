// Command scale is Sigil's load tool: it starts a real server cluster (1 or
// 3 `sigil server` processes on loopback), registers many entries through
// the admin API, simulates many agents in its own process (each with its
// own join token, its own attestation over the node API, its own mTLS
// connection with the SVID it got and its own Sync stream) and measures
// what an operator sizing a deployment needs to know:
//
//   - server RSS (VmRSS of each process) and live heap (from the Go
//     runtime's GC trace of each server process, GODEBUG=gctrace=1: the
//     heap marked live by the first collection after the point measured;
//     the server's metrics endpoint has no Go runtime metrics) per entry
//     and per connected agent;
//   - the time for one agent's full sync of every bulk entry;
//   - propagation p50/p99 of one new entry to every connected agent: the
//     entry is parented to spiffe://<td>/scale/group, which every simulated
//     agent reaches through one nested entry of its own with that SPIFFE
//     ID (join-token agents share no node selector a node alias could
//     match);
//   - Raft snapshot size and time (admin SnapshotSave);
//   - restart-to-ready time of a server holding the entries (kill -9,
//     start, time until /ready answers and until a Sync over the node API
//     returns the full set);
//   - memory returned after deleting half of the bulk entries.
//
// Run it with `make scale SCALEFLAGS='-entries 10000,100000 -agents
// 100,1000'` or `go run ./bench/scale -h`. Each combination of -entries and
// -agents runs on a fresh cluster. Every loop is bounded in count and
// time, and -timeout bounds the whole run. See docs/scale.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// options are the tool's settings, from its flags.
type options struct {
	sigil    string        // sigil binary; empty: build ./cmd/sigil
	servers  int           // 1 or 3
	entries  []int         // bulk entries per run
	agents   []int         // simulated agents per run
	probes   int           // propagation probes (new entries) per run
	timeout  time.Duration // whole run
	jsonOut  string        // -json FILE
	maxRSS   int64         // bound of any server's RSS, bytes; the run stops past it
	keepLogs bool          // keep the temp dir (server logs) after the run
	quiet    bool          // no progress lines
}

func main() {
	var o options
	var entries, agents string
	flag.StringVar(&o.sigil, "sigil", "", "sigil binary to run (default: build ./cmd/sigil into a temp dir)")
	flag.IntVar(&o.servers, "servers", 1, "servers in the cluster: 1 or 3")
	flag.StringVar(&entries, "entries", "10000", "bulk entries, comma-separated for several runs (e.g. 10000,100000)")
	flag.StringVar(&agents, "agents", "100", "simulated agents, comma-separated for several runs (e.g. 100,1000)")
	flag.IntVar(&o.probes, "probes", 10, "new entries timed to every connected agent (propagation) per run")
	flag.DurationVar(&o.timeout, "timeout", 30*time.Minute, "bound of the whole run")
	flag.StringVar(&o.jsonOut, "json", "", "also write every run's figures to this file as JSON")
	maxRSSMiB := flag.Int64("max-server-rss", 8192, "stop the run when a server's RSS exceeds this many MiB (this machine's other work needs memory too)")
	flag.BoolVar(&o.keepLogs, "keep", false, "keep the temp dir with the servers' data and logs")
	flag.BoolVar(&o.quiet, "q", false, "print only the tables")
	flag.Parse()
	o.maxRSS = *maxRSSMiB << 20
	var err error
	if o.entries, err = intList("entries", entries); err == nil {
		o.agents, err = intList("agents", agents)
	}
	if err == nil {
		err = o.validate()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	results, err := runAll(ctx, o, os.Stdout)
	if o.jsonOut != "" && len(results) > 0 {
		if werr := writeJSON(o.jsonOut, results); werr != nil && err == nil {
			err = werr
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(1)
	}
}

// intList parses a comma-separated list of positive integers.
func intList(name, s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(strings.ReplaceAll(f, "_", "")))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-%s: %q is not a positive integer", name, f)
		}
		out = append(out, n)
	}
	return out, nil
}

// Bounds of one run's sizes: beyond them a run would not fit this kind of
// machine (the simulated agents live in this process).
const (
	maxEntries = 5_000_000
	maxAgents  = 20_000
	maxProbes  = 1000
	batchSize  = 10_000 // entries per BatchCreateEntry / BatchDeleteEntry call
)

func (o options) validate() error {
	if o.servers != 1 && o.servers != 3 {
		return fmt.Errorf("-servers must be 1 or 3, not %d", o.servers)
	}
	for _, e := range o.entries {
		if e < 2 || e > maxEntries {
			return fmt.Errorf("-entries %d out of range: want 2 to %d", e, maxEntries)
		}
	}
	for _, a := range o.agents {
		if a > maxAgents {
			return fmt.Errorf("-agents %d out of range: want 1 to %d", a, maxAgents)
		}
	}
	if o.probes < 1 || o.probes > maxProbes {
		return fmt.Errorf("-probes %d out of range: want 1 to %d", o.probes, maxProbes)
	}
	if o.maxRSS <= 0 {
		return errors.New("-max-server-rss must be positive")
	}
	if o.timeout <= 0 {
		return errors.New("-timeout must be positive")
	}
	return nil
}

// runAll runs every combination of entries and agents on a fresh cluster,
// prints each run's table to w and, with more than one run, a summary
// table with one column per run.
func runAll(ctx context.Context, o options, w io.Writer) ([]*Result, error) {
	dir, err := os.MkdirTemp("", "sigil-scale-")
	if err != nil {
		return nil, fmt.Errorf("%w", err)
	}
	if o.keepLogs {
		fmt.Fprintf(w, "scale: data and logs in %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	bin := o.sigil
	if bin == "" {
		if bin, err = buildSigil(ctx, dir); err != nil {
			return nil, err
		}
	}
	var results []*Result
	for _, e := range o.entries {
		for _, a := range o.agents {
			r := &Result{Servers: o.servers, Entries: e, Agents: a}
			rdir, err := os.MkdirTemp(dir, fmt.Sprintf("run-%de-%da-", e, a))
			if err != nil {
				return results, fmt.Errorf("%w", err)
			}
			run := &run{o: o, bin: bin, dir: rdir, res: r, w: w, log: progress(w, o.quiet)}
			err = run.do(ctx)
			if err != nil {
				// What was measured before the failure is still printed
				// (and written with -json), marked as incomplete.
				r.Error = err.Error()
				writeTable(w, r)
				return append(results, r), fmt.Errorf("%d entries, %d agents: %w", e, a, err)
			}
			results = append(results, r)
			writeTable(w, r)
		}
	}
	if len(results) > 1 {
		writeSummary(w, results)
	}
	return results, nil
}

func progress(w io.Writer, quiet bool) func(format string, args ...any) {
	start := time.Now()
	return func(format string, args ...any) {
		if !quiet {
			fmt.Fprintf(w, "  [%6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
		}
	}
}

func writeJSON(path string, results []*Result) error {
	b, err := json.MarshalIndent(struct {
		Machine string    `json:"machine"`
		Runs    []*Result `json:"runs"`
	}{machine(), results}, "", "  ")
	if err != nil {
		return fmt.Errorf("%w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("%w", err)
	}
	return nil
}
