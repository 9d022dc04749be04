package bench

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"
)

// Machine is what a report says of the machine it ran on.
type Machine struct {
	CPUs   int    `json:"cpus"`
	Model  string `json:"cpu_model,omitempty"`
	Kernel string `json:"kernel,omitempty"`
	MemGiB int    `json:"mem_gib,omitempty"`
	Go     string `json:"go"`
	OSArch string `json:"os_arch"`
	// CPUSpeed and ClockReadNs are measured when the run starts;
	// ClockSource is what the clock read: "tsc" or "kernel".
	CPUSpeed    []CPUSpeed `json:"cpu_speed,omitempty"`
	ClockReadNs float64    `json:"clock_read_ns,omitempty"`
	ClockSource string     `json:"clock_source,omitempty"`
}

// ReadMachine describes this machine.
func ReadMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), OSArch: runtime.GOOS + "/" + runtime.GOARCH}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.Model = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Sysname[:]) + " " + unix.ByteSliceToString(u.Release[:])
	}
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) == nil {
		m.MemGiB = int((uint64(si.Totalram)*uint64(si.Unit) + 1<<29) >> 30)
	}
	return m
}

func (m Machine) String() string {
	s := fmt.Sprintf("%d CPUs", m.CPUs)
	if m.Model != "" {
		s += " (" + m.Model + ")"
	}
	if m.MemGiB > 0 {
		s += fmt.Sprintf(", %d GiB", m.MemGiB)
	}
	if m.Kernel != "" {
		s += ", " + m.Kernel
	}
	s += ", " + m.Go + " " + m.OSArch
	if len(m.CPUSpeed) > 0 {
		var parts []string
		for _, c := range m.CPUSpeed {
			parts = append(parts, fmt.Sprintf("cpu%d %.2f", c.CPU, c.Relative))
		}
		s += "\ncpu speed: " + strings.Join(parts, ", ") + " (a fixed loop pinned to each, relative to the fastest)"
	}
	if m.ClockReadNs > 0 {
		via := map[string]string{"tsc": ", read from the CPU's TSC", "kernel": ", read through the vDSO"}[m.ClockSource]
		s += fmt.Sprintf("\nclock read: %.1f ns (CLOCK_MONOTONIC%s; every latency sample takes one)", m.ClockReadNs, via)
	}
	return s
}

// WriteTable writes the report as aligned tables: latency, then throughput.
func (rep *Report) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "machine: %s\n", rep.Machine)
	if len(rep.Rings) > 0 {
		fmt.Fprintf(w, "ring: %s\n", ringLine(rep.Rings))
	}
	for _, warn := range rep.Warnings {
		fmt.Fprintf(w, "warning: %s\n", warn)
	}
	var lat, thr []*Row
	for _, r := range rep.Rows {
		if r.Scenario == "latency" {
			lat = append(lat, r)
		} else {
			thr = append(thr, r)
		}
	}
	if len(lat) > 0 {
		fmt.Fprintln(w, "\nLatency, one way (sender's CLOCK_MONOTONIC stamp to the reader's reading of it)")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "series\tmethod\tsent/s\tP→R\tsize\tp50\tp90\tp99\tp99.9\tmax\tcount\t×floor\t×broker\tcheck\t")
		for _, r := range lat {
			method, achieved := r.Method, "-"
			if r.Method == "rate" {
				method = fmt.Sprintf("%s/s", siCount(float64(r.Rate)))
				achieved = siCount(r.Achieved)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d→%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t\n",
				r.Series, method, achieved, r.Producers, r.Readers, fmtSize(r.Size),
				fmtDur(r.Latency.P50), fmtDur(r.Latency.P90), fmtDur(r.Latency.P99), fmtDur(r.Latency.P999), fmtDur(r.Latency.Max),
				r.Latency.Count, fmtFloorRatio(r), fmtRatio(r.VsBroker, ""), r.Check)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(w, "method: paced (one message in flight) or the offered rate per producer; sent/s: the rate the producer kept.")
		fmt.Fprintln(w, "×floor: p50 over the p50 of the floor named; ×broker: p50 over broker/unix's in the same row set (lower is better).")
		if rounds := pacedRounds(lat); rounds > 1 {
			fmt.Fprintf(w, "paced rows: %d rounds, each running every paced series in turn; ×floor is the median of the rounds' ratios (their range in brackets).\n", rounds)
		}
	}
	if len(thr) > 0 {
		fmt.Fprintln(w, "\nThroughput, as fast as the producers send (delivered to the slowest reader; median of runs)")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "series\tP→R\tsize\tevents/s\tMB/s\tlat p50\tlat p99\truns\t×floor\t×broker\tcheck\t")
		for _, r := range thr {
			fmt.Fprintf(tw, "%s\t%d→%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t\n",
				r.Series, r.Producers, r.Readers, fmtSize(r.Size), siCount(r.EventsPerSec), fmt.Sprintf("%.0f", r.MBPerSec),
				fmtDur(r.Latency.P50), fmtDur(r.Latency.P99), r.Runs, fmtRatio(r.VsFloor, ""), fmtRatio(r.VsBroker, ""), r.Check)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(w, "lat: one-way latency of 1 message in 16, mostly time queued behind the others.")
		fmt.Fprintln(w, "×floor: events/s over floor/spsc's at the same size; ×broker: over broker/unix's in the same P→R and size (higher is better).")
	}
	for _, r := range rep.Rows {
		if r.Err != "" {
			fmt.Fprintf(w, "error: %s %s %d→%d %s: %s\n", r.Scenario, r.Series, r.Producers, r.Readers, fmtSize(r.Size), r.Err)
		}
	}
	fmt.Fprintf(w, "\nran %s in %s\n", rep.Started, rep.Elapsed)
	return nil
}

// ringLine describes the ring files of a run: one geometry, or each with
// the payload sizes that ran on it.
func ringLine(rings []RingGeometry) string {
	type shape struct{ dataBytes, slots int }
	var shapes []shape
	sizes := map[shape][]string{}
	for _, g := range rings {
		s := shape{g.DataBytes, g.IndexSlots}
		if sizes[s] == nil {
			shapes = append(shapes, s)
		}
		sizes[s] = append(sizes[s], fmtSize(g.Size))
	}
	var parts []string
	for _, s := range shapes {
		part := fmt.Sprintf("%s data, %d index slots", fmtSize(s.dataBytes), s.slots)
		if len(shapes) > 1 {
			part += " at " + strings.Join(sizes[s], ", ")
		}
		parts = append(parts, part)
	}
	return strings.Join(parts, "; ") + " (ring and events series; their paced rows use the bus's default ring)"
}

func fmtDur(d time.Duration) string {
	switch {
	case d == 0:
		return "-"
	case d < time.Microsecond:
		return fmt.Sprintf("%dns", d.Nanoseconds())
	case d < time.Millisecond:
		return fmt.Sprintf("%.1fµs", float64(d)/1e3)
	case d < time.Second:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

// fmtFloorRatio is a row's ×floor, with the range of its rounds' ratios
// when it was measured in rounds.
func fmtFloorRatio(r *Row) string {
	if len(r.VsFloorRounds) < 2 {
		return fmtRatio(r.VsFloor, r.FloorSeries)
	}
	return fmt.Sprintf("%s (%.2f–%.2f) %s", fmtRatio(r.VsFloor, ""),
		slices.Min(r.VsFloorRounds), slices.Max(r.VsFloorRounds), strings.TrimPrefix(r.FloorSeries, "floor/"))
}

// pacedRounds is the most rounds a paced row of rows was measured in.
func pacedRounds(rows []*Row) int {
	n := 0
	for _, r := range rows {
		if r.Method == "paced" {
			n = max(n, r.Runs)
		}
	}
	return n
}

func fmtRatio(x float64, floor string) string {
	if x == 0 {
		return "-"
	}
	s := fmt.Sprintf("%.2f", x)
	switch {
	case x >= 100:
		s = fmt.Sprintf("%.0f", x)
	case x < 0.01:
		s = fmt.Sprintf("%.1g", x)
	}
	if floor != "" {
		s += " " + strings.TrimPrefix(floor, "floor/")
	}
	return s
}

// siCount writes a count with a k or M suffix.
func siCount(x float64) string {
	switch {
	case x >= 1e6:
		return fmt.Sprintf("%.2fM", x/1e6)
	case x >= 1e3:
		return fmt.Sprintf("%.1fk", x/1e3)
	}
	return fmt.Sprintf("%.0f", x)
}
