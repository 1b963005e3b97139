package main

import (
	"fmt"
	"io"
	"runtime"
	"strings"
)

// Mem is one memory measurement of a server process.
type Mem struct {
	RSS  int64 `json:"rss_bytes"`  // VmRSS
	Heap int64 `json:"heap_bytes"` // live heap at the first GC after the point (MiB resolution)
}

// ServerFigures are one server's memory at each point of a run.
type ServerFigures struct {
	Name         string `json:"name"`
	Idle         Mem    `json:"idle"`          // join tokens only
	Entries      Mem    `json:"entries"`       // every entry created
	BeforeAgents Mem    `json:"before_agents"` // after the probe agent's full sync
	Agents       Mem    `json:"agents"`        // every simulated agent connected and synced
	BeforeDelete Mem    `json:"before_delete"` // after the restart, every entry still there
	AfterDelete  Mem    `json:"after_delete"`  // half of the bulk entries deleted
	// PeakRSS is the highest RSS of the server's processes until the
	// deletion: sampled every 250 ms, and each process's VmHWM.
	PeakRSS int64 `json:"peak_rss_bytes"`
}

// Result is what one run (one size) measured.
type Result struct {
	Servers      int `json:"servers"`
	Entries      int `json:"bulk_entries"`  // parented to the probe agent
	Agents       int `json:"agents"`        // simulated, connected at once
	TotalEntries int `json:"total_entries"` // bulk + 2 per agent (group link and own)

	CreatePerSecond float64 `json:"bulk_create_per_second"` // BatchCreateEntry, batches of 10,000
	FullSyncSeconds float64 `json:"full_sync_seconds"`      // one agent, every bulk entry
	ConnectSeconds  float64 `json:"agents_connect_seconds"` // attest + full sync of every agent, 16 at a time

	PropagationSamples int     `json:"propagation_samples"` // probes x agents
	PropagationP50Ms   float64 `json:"propagation_p50_ms"`
	PropagationP99Ms   float64 `json:"propagation_p99_ms"`
	PropagationMaxMs   float64 `json:"propagation_max_ms"`

	SnapshotBytes   int64   `json:"snapshot_bytes"`
	SnapshotSeconds float64 `json:"snapshot_seconds"`

	RestartReadySeconds float64 `json:"restart_ready_seconds"` // kill -9, start -> /ready
	RestartSyncSeconds  float64 `json:"restart_sync_seconds"`  // kill -9, start -> full sync over the node API

	Server  []*ServerFigures `json:"server"`
	Seconds float64          `json:"run_seconds"`
	Error   string           `json:"error,omitempty"` // set when the run stopped early: the figures after it are zero
}

// PerEntry is the mean over servers of (memory with entries - idle) /
// total entries.
func (r *Result) PerEntry() (rss, heap float64) {
	if r.TotalEntries == 0 || len(r.Server) == 0 {
		return 0, 0
	}
	for _, s := range r.Server {
		rss += float64(s.Entries.RSS - s.Idle.RSS)
		heap += float64(s.Entries.Heap - s.Idle.Heap)
	}
	n := float64(len(r.Server) * r.TotalEntries)
	return rss / n, heap / n
}

// PerAgent is the sum over servers of (memory with agents - before) /
// agents: agents are spread over the servers.
func (r *Result) PerAgent() (rss, heap float64) {
	if r.Agents == 0 {
		return 0, 0
	}
	for _, s := range r.Server {
		rss += float64(s.Agents.RSS - s.BeforeAgents.RSS)
		heap += float64(s.Agents.Heap - s.BeforeAgents.Heap)
	}
	return rss / float64(r.Agents), heap / float64(r.Agents)
}

func machine() string {
	return fmt.Sprintf("GOMAXPROCS=%d, %s/%s, %s", runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH, runtime.Version())
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// perServer formats one value per server, "a, b, c".
func perServer(r *Result, f func(*ServerFigures) string) string {
	var parts []string
	for _, s := range r.Server {
		parts = append(parts, f(s))
	}
	return strings.Join(parts, ", ")
}

// rows are the figures of a result, in table order: name and value.
func rows(r *Result) [][2]string {
	rssE, heapE := r.PerEntry()
	rssA, heapA := r.PerAgent()
	mem := func(pick func(*ServerFigures) Mem) string {
		return perServer(r, func(s *ServerFigures) string {
			m := pick(s)
			return fmt.Sprintf("%.0f/%.0f", mib(m.RSS), mib(m.Heap))
		})
	}
	return [][2]string{
		{"entries (bulk + 2 per agent)", fmt.Sprintf("%d", r.TotalEntries)},
		{"bulk entries created, /s (batches of 10,000)", fmt.Sprintf("%.0f", r.CreatePerSecond)},
		{"server RSS/live heap idle, MiB", mem(func(s *ServerFigures) Mem { return s.Idle })},
		{"server RSS/live heap with entries, MiB", mem(func(s *ServerFigures) Mem { return s.Entries })},
		{"server RSS/live heap with agents, MiB", mem(func(s *ServerFigures) Mem { return s.Agents })},
		{"peak server RSS (VmHWM and 250 ms samples), MiB", perServer(r, func(s *ServerFigures) string { return fmt.Sprintf("%.0f", mib(s.PeakRSS)) })},
		{"RSS per entry, B", fmt.Sprintf("%.0f", rssE)},
		{"live heap per entry, B", fmt.Sprintf("%.0f", heapE)},
		{"RSS per connected agent, KiB", fmt.Sprintf("%.1f", rssA/1024)},
		{"live heap per connected agent, KiB", fmt.Sprintf("%.1f", heapA/1024)},
		{fmt.Sprintf("one agent's full sync of %d entries, s", r.Entries), fmt.Sprintf("%.3f", r.FullSyncSeconds)},
		{fmt.Sprintf("%d agents attested + synced, s", r.Agents), fmt.Sprintf("%.2f", r.ConnectSeconds)},
		{fmt.Sprintf("propagation to %d agents p50 / p99 / max, ms", r.Agents),
			fmt.Sprintf("%.1f / %.1f / %.1f (%d samples)", r.PropagationP50Ms, r.PropagationP99Ms, r.PropagationMaxMs, r.PropagationSamples)},
		{"snapshot (SnapshotSave) size MiB / time s", fmt.Sprintf("%.2f / %.3f", mib(r.SnapshotBytes), r.SnapshotSeconds)},
		{"restart (kill -9) to /ready / full sync, s", fmt.Sprintf("%.2f / %.2f", r.RestartReadySeconds, r.RestartSyncSeconds)},
		{"delete half: RSS MiB before → after", perServer(r, func(s *ServerFigures) string {
			return fmt.Sprintf("%.0f → %.0f", mib(s.BeforeDelete.RSS), mib(s.AfterDelete.RSS))
		})},
		{"delete half: live heap MiB before → after", perServer(r, func(s *ServerFigures) string {
			return fmt.Sprintf("%.0f → %.0f", mib(s.BeforeDelete.Heap), mib(s.AfterDelete.Heap))
		})},
		{"run time, s", fmt.Sprintf("%.0f", r.Seconds)},
	}
}

// writeTable prints one run's figures as a markdown table.
func writeTable(w io.Writer, r *Result) {
	fmt.Fprintf(w, "\n%d server(s), %d bulk entries, %d agents (%s; memory per server: %s)\n\n",
		r.Servers, r.Entries, r.Agents, machine(), perServer(r, func(s *ServerFigures) string { return s.Name }))
	if r.Error != "" {
		fmt.Fprintf(w, "INCOMPLETE, stopped by: %s (later figures are zero)\n\n", r.Error)
	}
	fmt.Fprintln(w, "| figure | value |")
	fmt.Fprintln(w, "| --- | --- |")
	for _, row := range rows(r) {
		fmt.Fprintf(w, "| %s | %s |\n", row[0], row[1])
	}
}

// writeSummary prints every run side by side, one column per run.
func writeSummary(w io.Writer, results []*Result) {
	fmt.Fprintf(w, "\nsummary (%s)\n\n| figure |", machine())
	for _, r := range results {
		fmt.Fprintf(w, " %d srv, %d entries, %d agents |", r.Servers, r.Entries, r.Agents)
	}
	fmt.Fprint(w, "\n| --- |")
	for range results {
		fmt.Fprint(w, " --- |")
	}
	fmt.Fprintln(w)
	all := make([][][2]string, len(results))
	for i, r := range results {
		all[i] = rows(r)
	}
	for k := range all[0] {
		name := all[0][k][0]
		// Names that carry the size are generalised for the summary.
		switch {
		case strings.HasPrefix(name, "one agent's full sync"):
			name = "one agent's full sync of the bulk entries, s"
		case strings.Contains(name, "agents attested"):
			name = "agents attested + synced, s"
		case strings.HasPrefix(name, "propagation"):
			name = "propagation to all agents p50 / p99 / max, ms"
		}
		fmt.Fprintf(w, "| %s |", name)
		for i := range results {
			fmt.Fprintf(w, " %s |", all[i][k][1])
		}
		fmt.Fprintln(w)
	}
}
