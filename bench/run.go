package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/shmring/shmring/internal/clock"
	"github.com/shmring/shmring/shm"
)

// Config is what Run measures. The zero value, with Exe set or taken from
// os.Executable, is the default run: a minute or less on two cores.
type Config struct {
	// Exe is the binary the harness re-executes for its children; it must
	// call ServeChild first thing. Default: this process's own.
	Exe string
	// Dir is where the runs' rings and sockets live, in a fresh directory
	// per run that is removed after it. Default: /dev/shm where it exists.
	Dir string
	// Quick shortens everything, for a smoke test in seconds.
	Quick bool
	// Duration is how long each producer sends in a throughput run, and a
	// quarter of how long it sends in a latency run at a rate (default 250ms,
	// 100ms when Quick).
	Duration time.Duration
	// Repeat is how many times each throughput row runs; the row shows
	// the median (default 3, 1 when Quick).
	Repeat int
	// Samples is the number of samples of each paced latency series
	// (default 20000, 1000 when Quick).
	Samples int
	// Rounds is how many parts the paced latency series' samples are taken
	// in: each round runs every paced series in turn, so that a series and
	// the floor it is compared with sample the same stretches of the
	// machine's time (default 5, 2 when Quick).
	Rounds int
	// Readers are the reader counts of the throughput rows (default 1 and
	// 4). The latency rows at a rate use them too when set (default 1).
	Readers []int
	// Producers are the producer counts of the throughput rows with one
	// reader and several producers (default 2; 1 means none).
	Producers []int
	// Sizes are the payload sizes in bytes (default 64).
	Sizes []int
	// Modes are the event bus's reader modes to run: spin, wake, timer
	// (default all three).
	Modes []string
	// Rate is the offered rate of the latency rows, in messages a second
	// per producer (default 10000).
	Rate int
	// Interval is the Timer mode's poll period (default 1ms).
	Interval time.Duration
	// Series, if set, keeps only the series with these names (events/wake,
	// broker/unix, pipe, chan, ring, floor/spsc, floor/futex, ...).
	Series []string
	// RingBytes and RingSlots are the data bytes and index slots of the
	// ring files of the ring and events series, powers of two (default
	// 64 MiB, 128 MiB for payloads near MaxSize, and 2^20 slots). Their
	// paced rows run on the bus's default ring.
	RingBytes int
	RingSlots int
	// Progress, if set, gets a line as each run starts.
	Progress io.Writer
}

// MaxSize is the largest payload a scenario sends. The rings are sized
// for a thousand messages of the largest size asked for.
const MaxSize = 64 << 10

// MaxRate is the highest offered rate: a period of 100 ns.
const MaxRate = 10_000_000

// Series names of the rows that are not transports.
const (
	seriesSPSC = "floor/spsc"
	seriesChan = "chan"
)

// eventsModes are the bus's reader modes, in the order the rows show them.
var eventsModes = []string{"spin", "wake", "timer"}

// withDefaults fills in the zero fields.
func (c Config) withDefaults() (Config, error) {
	if c.Exe == "" {
		exe, err := os.Executable()
		if err != nil {
			return c, fmt.Errorf("bench: own executable: %w", err)
		}
		c.Exe = exe
	}
	if c.Dir == "" {
		c.Dir = os.TempDir()
		if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
			c.Dir = "/dev/shm"
		}
	}
	if fi, err := os.Stat(c.Dir); err != nil {
		return c, fmt.Errorf("bench: directory for the runs: %w", err)
	} else if !fi.IsDir() {
		return c, fmt.Errorf("bench: %s is not a directory", c.Dir)
	}
	def := func(v *int, normal, quick int) {
		if *v == 0 {
			*v = normal
			if c.Quick {
				*v = quick
			}
		}
	}
	if c.Duration == 0 {
		c.Duration = 250 * time.Millisecond
		if c.Quick {
			c.Duration = 100 * time.Millisecond
		}
	}
	def(&c.Repeat, 3, 1)
	def(&c.Samples, 20000, 1000)
	def(&c.Rounds, 5, 2)
	def(&c.Rate, 10000, 10000)
	if c.Interval == 0 {
		c.Interval = time.Millisecond
	}
	if len(c.Sizes) == 0 {
		c.Sizes = []int{64}
	}
	if len(c.Producers) == 0 {
		c.Producers = []int{2}
	}
	if len(c.Modes) == 0 {
		c.Modes = eventsModes
	}
	for _, m := range c.Modes {
		if !slices.Contains(eventsModes, m) {
			return c, fmt.Errorf("bench: unknown mode %q (want spin, wake or timer)", m)
		}
	}
	for _, s := range c.Sizes {
		if err := checkSize(s); err != nil {
			return c, err
		}
		if s > MaxSize {
			return c, fmt.Errorf("bench: payload size %d is above %d", s, MaxSize)
		}
	}
	for _, n := range append(slices.Clone(c.Readers), c.Producers...) {
		if n < 1 || n > 64 {
			return c, fmt.Errorf("bench: %d processes: want 1 to 64", n)
		}
	}
	if c.Duration < 0 || c.Repeat < 0 || c.Samples < 0 || c.Rounds < 0 || c.Rate < 0 || c.Interval < 0 {
		return c, errors.New("bench: negative duration, repeat, samples, rounds, rate or interval")
	}
	c.Rounds = min(c.Rounds, c.Samples) // at least one sample a round
	if c.Rate > MaxRate {
		return c, fmt.Errorf("bench: rate %d is above %d a second", c.Rate, MaxRate)
	}
	if c.RingBytes < 0 || c.RingSlots < 0 {
		return c, errors.New("bench: negative ring bytes or slots")
	}
	if c.RingSlots > shm.MaxIndexSlots {
		return c, fmt.Errorf("bench: %d ring index slots is above %d", c.RingSlots, shm.MaxIndexSlots)
	}
	for _, s := range c.Sizes {
		if err := c.checkRingFile(s); err != nil {
			return c, err
		}
	}
	known := c.seriesNames()
	for _, s := range c.Series {
		if !slices.Contains(known, s) {
			return c, fmt.Errorf("bench: unknown series %q (known: %s)", s, strings.Join(known, ", "))
		}
	}
	return c, nil
}

func (c Config) seriesNames() []string {
	names := []string{seriesSPSC}
	for _, p := range pacedSeriesList {
		if !slices.Contains(names, p.name) {
			names = append(names, p.name)
		}
	}
	for _, m := range eventsModes {
		if !slices.Contains(names, "events/"+m) {
			names = append(names, "events/"+m)
		}
	}
	return append(names, "ring", "broker/unix", "pipe", seriesChan)
}

// ringFile returns the geometry of the ring file the ring and events rows
// of payloads of size bytes run on: RingBytes and RingSlots where set,
// ringSizes' otherwise, and shm's defaults for the rest.
func (c Config) ringFile(size int) shm.Geometry {
	data, slots := ringSizes(size)
	if c.RingBytes > 0 {
		data = c.RingBytes
	}
	if c.RingSlots > 0 {
		slots = c.RingSlots
	}
	return shm.Geometry{DataBytes: uint64(data), IndexSlots: uint32(slots)}.WithDefaults()
}

// checkRingFile reports whether shm can make the ring file of payloads of
// size bytes, and whether one of its records holds such a payload as an
// event (larger than the bare ring's record of it).
func (c Config) checkRingFile(size int) error {
	g := c.ringFile(size)
	if err := g.Validate(); err != nil {
		return fmt.Errorf("bench: ring file: %w", err)
	}
	if record := size + eventOverhead; record > int(g.MaxRecord) {
		return fmt.Errorf("bench: a ring of %s data and %d index slots takes records of up to %d bytes, too small for %d-byte payloads (%d bytes as events)",
			fmtSize(int(g.DataBytes)), g.IndexSlots, g.MaxRecord, size, record)
	}
	return nil
}

// ringFiles lists the geometries of the ring files of the run's ring and
// events rows, one per payload size; none if it runs no such row.
func (c Config) ringFiles() []RingGeometry {
	if !c.wants("ring") && !slices.ContainsFunc(c.Modes, func(m string) bool { return c.wants("events/" + m) }) {
		return nil
	}
	var out []RingGeometry
	for _, size := range c.Sizes {
		g := c.ringFile(size)
		out = append(out, RingGeometry{Size: size, DataBytes: int(g.DataBytes), IndexSlots: int(g.IndexSlots)})
	}
	return out
}

func (c Config) wants(series string) bool {
	if strings.HasPrefix(series, "events/") && !slices.Contains(c.Modes, strings.TrimPrefix(series, "events/")) {
		return false
	}
	return len(c.Series) == 0 || slices.Contains(c.Series, series)
}

// Report is a whole run of the harness.
type Report struct {
	Machine  Machine  `json:"machine"`
	Command  string   `json:"command,omitempty"`
	Started  string   `json:"started"`
	Elapsed  string   `json:"elapsed"`
	Warnings []string `json:"warnings,omitempty"`
	// Rings are the ring files the ring and events rows ran on.
	Rings []RingGeometry `json:"rings,omitempty"`
	// Interrupted says the run was stopped before every row was measured.
	Interrupted bool   `json:"interrupted,omitempty"`
	Rows        []*Row `json:"rows"`
}

// RingGeometry is the shape of the ring file that the ring and events rows
// of one payload size ran on (their paced rows use the bus's default).
type RingGeometry struct {
	Size       int `json:"size"`
	DataBytes  int `json:"data_bytes"`
	IndexSlots int `json:"index_slots"`
}

// Row is one measured series in one configuration.
type Row struct {
	// Scenario is "latency" (one-way latency, paced or at a rate) or
	// "throughput" (as fast as the producers can send).
	Scenario string `json:"scenario"`
	Series   string `json:"series"`
	// Method is "paced" (one message in flight), "rate" or "full speed".
	Method    string `json:"method"`
	Producers int    `json:"producers"`
	Readers   int    `json:"readers"`
	Size      int    `json:"size"`
	Rate      int    `json:"rate,omitempty"` // offered, per producer, for "rate"
	// Achieved is the rate the producers kept, per producer (the mean of
	// the runs), for "rate"; Behind counts sends a whole period late.
	Achieved float64 `json:"achieved,omitempty"`
	Behind   uint64  `json:"behind,omitempty"`
	Runs     int     `json:"runs"`

	// Throughput: messages a second delivered to every reader (the
	// slowest reader's), the median of the runs, and each run's.
	EventsPerSec float64   `json:"events_per_sec,omitempty"`
	MBPerSec     float64   `json:"mb_per_sec,omitempty"`
	RunRates     []float64 `json:"run_rates,omitempty"`

	// Latency of the messages, one way (at full speed, a sample of them).
	Latency Summary `json:"latency"`

	// What the readers checked, summed over the runs.
	Sent     uint64 `json:"sent"`
	Lost     uint64 `json:"lost"`     // the most any reader missed
	Dropped  uint64 `json:"dropped"`  // refused by the transport at the producer (part of Lost)
	Disorder uint64 `json:"disorder"` // out of order within a producer
	Bad      uint64 `json:"bad"`      // malformed, or readers that disagree on the order
	// Check is "ok", or what went wrong.
	Check string `json:"check"`
	Err   string `json:"error,omitempty"`

	// Ratios: against the floor of the kind (FloorSeries), and against the
	// unix-socket broker in the same configuration. For latency, p50 over
	// p50 (lower is better); for throughput, rate over rate (higher is
	// better). Zero when there is nothing to compare.
	// A paced row measured in rounds compares round by round: VsFloor is
	// the median of VsFloorRounds, each round's p50 over the floor's p50 in
	// the same round (RoundP50s).
	FloorSeries   string    `json:"floor_series,omitempty"`
	VsFloor       float64   `json:"vs_floor,omitempty"`
	VsFloorRounds []float64 `json:"vs_floor_rounds,omitempty"`
	VsBroker      float64   `json:"vs_broker,omitempty"`
	RoundP50s     []int64   `json:"round_p50_ns,omitempty"`

	Counters map[string]int64 `json:"counters,omitempty"`

	hist     *Latency
	achieved []float64 // per producer and run
}

// Hist returns the row's latency histogram (nil for a row without one).
func (r *Row) Hist() *Latency { return r.hist }

// Failed reports whether the row could not be measured or did not check
// out (losses on a transport that drops nothing, disorder, disagreement).
func (r *Row) Failed() bool {
	return r.Err != "" || (r.Check != "ok" && !strings.HasPrefix(r.Check, "lost ") && !strings.HasPrefix(r.Check, "behind "))
}

// Run runs every row cfg asks for and returns the report. A row that fails
// is reported with its error, and the others still run. When ctx ends, the
// children of the run in progress are killed, its files removed, and Run
// returns what it measured so far with ctx's error.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	rep := &Report{Machine: ReadMachine(), Started: start.UTC().Format(time.RFC3339), Rings: cfg.ringFiles()}
	rep.Machine.CPUSpeed = MeasureCPUSpeeds()
	rep.Machine.ClockReadNs = MeasureClockRead()
	rep.Machine.ClockSource = clock.Source()
	h := &harness{ctx: ctx, cfg: cfg, rep: rep}
	if slow := slowCPUs(rep.Machine.CPUSpeed); slow != "" {
		h.warn("%s of the fastest CPU's speed: something else keeps it busy (another process, or another tenant of the host), and rows with a process there are slower for it", slow)
	}
	h.latencyRows()
	h.throughputRows()
	if err := ctx.Err(); err != nil {
		// The row in progress when it ended measured nothing true.
		if n := len(rep.Rows); n > 0 && rep.Rows[n-1].Err != "" {
			rep.Rows = rep.Rows[:n-1]
		}
		rep.Interrupted = true
	}
	if len(rep.Rows) == 0 && !rep.Interrupted {
		return nil, errors.New("bench: the flags select no rows")
	}
	h.ratios()
	rep.Elapsed = time.Since(start).Round(time.Millisecond).String()
	return rep, ctx.Err()
}

type harness struct {
	ctx context.Context
	cfg Config
	rep *Report
}

// newGroup returns a group for one run, stopped as soon as the harness is
// interrupted; done stops it at the end of the run.
func (h *harness) newGroup() (g *group, done func()) {
	g = &group{exe: h.cfg.Exe}
	stopOnCancel := context.AfterFunc(h.ctx, g.stop)
	return g, func() {
		stopOnCancel()
		g.stop()
	}
}

func (h *harness) progress(format string, args ...any) {
	if h.cfg.Progress != nil {
		fmt.Fprintf(h.cfg.Progress, format+"\n", args...)
	}
}

func (h *harness) warn(format string, args ...any) {
	w := fmt.Sprintf(format, args...)
	if !slices.Contains(h.rep.Warnings, w) {
		h.rep.Warnings = append(h.rep.Warnings, w)
		h.progress("warning: %s", w)
	}
}

// checkCores warns when a row asks for more busy processes than there are
// CPUs: then they take turns, and the figures measure the scheduler.
func (h *harness) checkCores(series string, busy int) {
	if cpus := runtime.NumCPU(); busy > cpus {
		h.warn("%s: %d processes keep a CPU busy on %d CPUs; they take turns, and the row measures the scheduler", series, busy, cpus)
	}
}

func (h *harness) latencyRows() {
	var paced []pacedSeries
	var rows []*Row
	for _, s := range pacedSeriesList {
		if !h.cfg.wants(s.name) {
			continue
		}
		busy := 1 // the sender spins while it waits for acknowledgements
		if s.spins {
			busy = 2
		}
		h.checkCores(s.name, busy)
		paced = append(paced, s)
		rows = append(rows, &Row{Scenario: "latency", Series: s.name, Method: "paced", Producers: 1, Readers: 1, Size: EventsPayload})
	}
	// Round by round, every series in turn: how fast a line or a wake-up
	// crosses between this VM's CPUs changes by several times from one
	// minute to the next, as the host moves them.
	rounds := h.cfg.Rounds
	for round := range rounds {
		for i, s := range paced {
			row := rows[i]
			if row.Err != "" || h.ctx.Err() != nil {
				continue
			}
			n := roundSamples(h.cfg.Samples, rounds, round)
			h.progress("latency  %-16s paced, round %d of %d, %d samples", s.name, round+1, rounds, n)
			res, err := h.runPaced(s, n)
			if err != nil {
				row.Err, row.Check = err.Error(), "FAILED"
				if rounds > 1 {
					row.Err = fmt.Sprintf("round %d: %v", round+1, err)
				}
				continue
			}
			row.addRound(res)
		}
	}
	for _, row := range rows {
		if row.Runs > 0 || row.Err != "" {
			h.rep.Rows = append(h.rep.Rows, row)
		}
	}
	readers := h.cfg.Readers
	if len(readers) == 0 {
		readers = []int{1}
	}
	for _, size := range h.cfg.Sizes {
		for _, n := range readers {
			for _, series := range h.transportSeries(false) {
				h.transportRow("latency", series, 1, n, size, h.cfg.Rate, 1)
			}
		}
	}
}

// roundSamples is how many of samples round takes: an even share, the
// first rounds taking one more while a remainder lasts.
func roundSamples(samples, rounds, round int) int {
	n := samples / rounds
	if round < samples%rounds {
		n++
	}
	return n
}

// addRound adds one round of a paced series to its row.
func (r *Row) addRound(res *Result) {
	if r.hist == nil {
		r.hist = new(Latency)
	}
	r.hist.Merge(res.Latency)
	r.RoundP50s = append(r.RoundP50s, int64(res.Latency.Quantile(0.5)))
	r.Runs++
	r.Latency = r.hist.Summary()
	r.Sent = uint64(r.hist.Count())
	for k, v := range res.Counters {
		if r.Counters == nil {
			r.Counters = map[string]int64{}
		}
		r.Counters[k] += v
	}
	if r.Err == "" {
		r.Check = "ok"
	}
}

func (h *harness) throughputRows() {
	readers := h.cfg.Readers
	if len(readers) == 0 {
		readers = []int{1, 4}
	}
	for _, size := range h.cfg.Sizes {
		for _, n := range readers {
			for _, series := range h.transportSeries(n == 1) {
				h.transportRow("throughput", series, 1, n, size, 0, h.cfg.Repeat)
			}
		}
		for _, p := range h.cfg.Producers {
			if p < 2 {
				continue
			}
			for _, series := range h.transportSeries(false) {
				if series == "pipe" {
					continue // one producer only
				}
				h.transportRow("throughput", series, p, 1, size, 0, h.cfg.Repeat)
			}
		}
	}
}

// transportSeries lists the series of transport rows, in table order.
func (h *harness) transportSeries(floor bool) []string {
	var out []string
	if floor && h.cfg.wants(seriesSPSC) {
		out = append(out, seriesSPSC)
	}
	for _, s := range []string{"ring", "events/spin", "events/wake", "events/timer", "broker/unix", "pipe", seriesChan} {
		if h.cfg.wants(s) {
			out = append(out, s)
		}
	}
	return out
}

// transportRow runs one row of producers and readers over a transport,
// runs times, and appends it.
func (h *harness) transportRow(scenario, series string, producers, readers, size, rate, runs int) {
	// The bare ring is a throughput row only: for latency, the bus's
	// rows are what a user gets.
	if (scenario == "latency" && (series == "ring" || series == seriesSPSC)) || h.ctx.Err() != nil {
		return
	}
	row := &Row{Scenario: scenario, Series: series, Method: "full speed", Producers: producers, Readers: readers, Size: size, Rate: rate, Runs: runs}
	if rate > 0 {
		row.Method = "rate"
	}
	h.rep.Rows = append(h.rep.Rows, row)
	busy := producers
	if t := transports[series]; (t != nil && t.spins) || series == seriesSPSC {
		busy += readers
	}
	if rate == 0 && series == "broker/unix" {
		busy++ // the broker relays all the time
	}
	h.checkCores(series, busy)
	hist := new(Latency)
	var errs []string
	for i := range runs {
		if h.ctx.Err() != nil {
			errs = append(errs, errStopped.Error())
			break
		}
		h.progress("%-10s %-16s %d→%d %6s %s, run %d of %d", scenario, series, producers, readers, fmtSize(size), row.Method, i+1, runs)
		out, err := h.runTransport(series, producers, readers, size, rate)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		row.add(out, hist)
	}
	row.finish(hist, errs, transports[series])
}

// runOut is what one run's children reported.
type runOut struct {
	producers []ProducerResult
	readers   []ReaderResult
}

// add folds one run into the row.
func (r *Row) add(out runOut, hist *Latency) {
	start, end := int64(0), int64(0)
	var sent, dropped uint64
	for i, p := range out.producers {
		if i == 0 || p.StartNs < start {
			start = p.StartNs
		}
		sent += p.Sent
		dropped += p.Dropped
		r.Behind += p.Behind
		if d := p.EndNs - p.StartNs; r.Rate > 0 && d > 0 {
			r.achieved = append(r.achieved, float64(p.Sent)/(float64(d)/1e9))
		}
	}
	minReceived := uint64(0)
	hashes := map[uint64]bool{}
	var lost uint64
	for i, rd := range out.readers {
		end = max(end, rd.EndNs)
		if i == 0 || rd.Received < minReceived {
			minReceived = rd.Received
		}
		if rd.Received > sent {
			r.Bad += rd.Received - sent // more than was sent: duplicates
		} else {
			lost = max(lost, sent-rd.Received)
		}
		r.Disorder += rd.Disorder
		r.Bad += rd.Malformed
		hashes[rd.OrderHash] = true
		if rd.Latency != nil {
			hist.Merge(rd.Latency)
		}
		for k, v := range rd.Counters {
			if r.Counters == nil {
				r.Counters = map[string]int64{}
			}
			r.Counters[k] += v
		}
	}
	if t := transports[r.Series]; (t != nil && t.ordered || r.Series == seriesChan) && lost == 0 && len(hashes) > 1 {
		r.Bad++ // readers saw different orders
		r.Check = "readers disagree on the order"
	}
	r.Sent += sent
	r.Lost += lost
	r.Dropped += dropped
	if elapsed := end - start; elapsed > 0 {
		r.RunRates = append(r.RunRates, float64(minReceived)/(float64(elapsed)/1e9))
	}
}

func (r *Row) finish(hist *Latency, errs []string, t *transport) {
	if len(errs) > 0 {
		r.Err = strings.Join(errs, "; ")
	}
	if len(r.RunRates) > 0 {
		r.EventsPerSec = median(r.RunRates)
		r.MBPerSec = r.EventsPerSec * float64(r.Size) / 1e6
	}
	if hist.Count() > 0 {
		r.hist = hist
		r.Latency = hist.Summary()
	}
	for _, a := range r.achieved {
		r.Achieved += a / float64(len(r.achieved))
	}
	switch {
	case r.Err != "":
		r.Check = "FAILED"
	case r.Check != "":
	case r.Disorder > 0:
		r.Check = fmt.Sprintf("%d out of order", r.Disorder)
	case r.Bad > 0:
		r.Check = fmt.Sprintf("%d bad", r.Bad)
	case r.Lost > 0 && t != nil && !t.lossy:
		r.Check = fmt.Sprintf("LOST %d on a lossless transport", r.Lost)
	case r.Lost > 0:
		r.Check = fmt.Sprintf("lost %d", r.Lost)
	case r.Behind*100 > r.Sent:
		// More than 1 % of the sends were late: the producer did not
		// keep the rate, and the row measured a lighter load in bursts.
		r.Check = fmt.Sprintf("behind %d", r.Behind)
	default:
		r.Check = "ok"
	}
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// runEnv is one run's shared setup, made in the harness.
type runEnv struct {
	spec    childSpec
	group   *group
	timeout time.Duration
	broker  *child
	// ring is the geometry prepareRing creates the ring file with.
	ring shm.Geometry
	// Files to hand down, and the harness's copies to close once the
	// children have them.
	readerFiles     [][]*os.File
	producerFiles   []*os.File
	closeAfterStart []*os.File
}

// runTransport runs one series once and collects what its children saw.
func (h *harness) runTransport(series string, producers, readers, size, rate int) (runOut, error) {
	dir, err := os.MkdirTemp(h.cfg.Dir, "shmbench-")
	if err != nil {
		return runOut{}, err
	}
	defer os.RemoveAll(dir)
	g, stop := h.newGroup()
	defer stop()
	env := &runEnv{
		spec: childSpec{
			Transport: series, Dir: dir, Producers: producers, Readers: readers, Size: size,
			Rate: rate, Duration: h.cfg.Duration, Sample: 1, Interval: h.cfg.Interval,
		},
		group:   g,
		timeout: 30 * time.Second,
		ring:    h.cfg.ringFile(size),
	}
	if rate > 0 {
		// Enough samples at a rate for a p99.9: 10,000 at the defaults.
		env.spec.Duration *= 4
	}
	if rate == 0 {
		// At full speed, a sample of the latencies: recording each would
		// cost the readers more than some transports do.
		env.spec.Sample = 16
	}
	defer func() {
		for _, f := range env.closeAfterStart {
			f.Close()
		}
	}()
	switch series {
	case seriesChan:
		return h.runChan(env)
	case seriesSPSC:
		return h.runSPSC(env)
	}
	t := transports[series]
	if t.oneProducer && producers > 1 {
		return runOut{}, fmt.Errorf("%s takes one producer", series)
	}
	if err := t.prepare(env); err != nil {
		return runOut{}, err
	}
	var rds, prods []*child
	for i := range readers {
		s := env.spec
		s.ID = i
		var files []*os.File
		if i < len(env.readerFiles) {
			files = env.readerFiles[i]
		}
		c, err := g.start("reader", []string{s.json()}, files...)
		if err != nil {
			return runOut{}, err
		}
		rds = append(rds, c)
	}
	if err := readyAll(rds, env.timeout); err != nil {
		return runOut{}, err
	}
	for i := range producers {
		s := env.spec
		s.ID = i
		c, err := g.start("producer", []string{s.json()}, env.producerFiles...)
		if err != nil {
			return runOut{}, err
		}
		prods = append(prods, c)
	}
	if err := readyAll(prods, env.timeout); err != nil {
		return runOut{}, err
	}
	// The children hold their own copies of the pipes now; the
	// harness's must go, or a reader would never see the end of its pipe.
	for _, f := range env.closeAfterStart {
		f.Close()
	}
	env.closeAfterStart = nil
	// Every child has mapped the ring or connected: its name can go, so
	// that a harness killed from now on leaves at most an empty directory.
	unlinkShared(dir)
	for _, p := range prods {
		p.release()
	}
	var out runOut
	wait := env.spec.Duration + time.Minute
	var errs []error
	for _, p := range prods {
		var res ProducerResult
		if err := p.result(&res, wait); err != nil {
			errs = append(errs, err)
		}
		out.producers = append(out.producers, res)
	}
	if err := errors.Join(errs...); err != nil {
		return out, err
	}
	for _, r := range rds {
		r.release() // the producers are done: drain and stop
	}
	for _, r := range rds {
		var res ReaderResult
		if err := r.result(&res, wait); err != nil {
			errs = append(errs, err)
		}
		out.readers = append(out.readers, res)
	}
	if env.broker != nil {
		if err := env.broker.wait(wait); err != nil {
			errs = append(errs, err)
		}
	}
	return out, errors.Join(errs...)
}

func (h *harness) runChan(env *runEnv) (runOut, error) {
	c, err := env.group.start(seriesChan, []string{env.spec.json()})
	if err != nil {
		return runOut{}, err
	}
	if _, err := c.expect("ready", env.timeout); err != nil {
		return runOut{}, err
	}
	c.release()
	var res chanResult
	if err := c.result(&res, env.spec.Duration+time.Minute); err != nil {
		return runOut{}, err
	}
	return runOut{producers: res.Producers, readers: res.Readers}, nil
}

func (h *harness) runSPSC(env *runEnv) (runOut, error) {
	if env.spec.Producers != 1 || env.spec.Readers != 1 {
		return runOut{}, errors.New("the spsc floor is one producer and one reader")
	}
	if err := prepareSPSC(env); err != nil {
		return runOut{}, err
	}
	rd, err := env.group.start("spsc-reader", []string{env.spec.json()})
	if err != nil {
		return runOut{}, err
	}
	wr, err := env.group.start("spsc-writer", []string{env.spec.json()})
	if err != nil {
		return runOut{}, err
	}
	if err := readyAll([]*child{rd, wr}, env.timeout); err != nil {
		return runOut{}, err
	}
	unlinkShared(env.spec.Dir)
	wr.release()
	var p ProducerResult
	var r ReaderResult
	wait := env.spec.Duration + time.Minute
	if err := errors.Join(wr.result(&p, wait), rd.result(&r, wait)); err != nil {
		return runOut{}, err
	}
	return runOut{producers: []ProducerResult{p}, readers: []ReaderResult{r}}, nil
}

// runPaced runs a paced series: the sender here, the receiver in a child.
func (h *harness) runPaced(s pacedSeries, n int) (*Result, error) {
	dir, err := os.MkdirTemp(h.cfg.Dir, "shmbench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	l, err := CreateLink(pacedLink(dir))
	if err != nil {
		return nil, err
	}
	defer l.Close()
	// A receiver that died (or was stopped) fails the sender this soon.
	l.Timeout = 5 * time.Second
	g, stop := h.newGroup()
	defer stop()
	c, err := g.start("paced", []string{s.name, dir, strconv.Itoa(n)})
	if err != nil {
		return nil, err
	}
	if _, err := c.expect("ready", 30*time.Second); err != nil {
		return nil, err
	}
	errc := make(chan error, 1)
	go func() { errc <- s.send(l, dir, n) }()
	var res Result
	rerr := c.result(&res, time.Duration(n)*time.Millisecond+time.Minute)
	if rerr != nil {
		c.stop() // and the sender times out on its Link
	}
	if err := errors.Join(<-errc, rerr); err != nil {
		return nil, err
	}
	if res.Latency == nil {
		return nil, fmt.Errorf("%s: receiver reported no latencies", s.name)
	}
	if res.Latency.Count() != int64(n) {
		return nil, fmt.Errorf("%s: receiver measured %d of %d samples", s.name, res.Latency.Count(), n)
	}
	return &res, nil
}

// unlinkShared removes the names of a run's ring files and socket once
// every child holds them open.
func unlinkShared(dir string) {
	for _, p := range []string{ringPath(dir), brokerPath(dir), spscPath(dir)} {
		_ = os.Remove(p) // absent for most transports
	}
}

// ratios fills in each row's comparisons, once every row is measured.
func (h *harness) ratios() {
	find := func(match func(*Row) bool) *Row {
		for _, r := range h.rep.Rows {
			if r.Err == "" && match(r) {
				return r
			}
		}
		return nil
	}
	for _, r := range h.rep.Rows {
		if r.Err != "" {
			continue
		}
		if r.Scenario == "latency" {
			if strings.HasPrefix(r.Series, "floor/") || r.Latency.Count == 0 {
				continue
			}
			floor := "floor/futex"
			t := transports[r.Series]
			p, _ := findPaced(r.Series) // the zero series, which does not spin, if there is none
			if t != nil && t.spins || p.spins {
				floor = "floor/cacheline"
			}
			if f := find(func(o *Row) bool { return o.Series == floor }); f != nil && f.Latency.P50 > 0 {
				r.FloorSeries, r.VsFloor = floor, float64(r.Latency.P50)/float64(f.Latency.P50)
				if len(r.RoundP50s) > 1 && len(r.RoundP50s) == len(f.RoundP50s) && !slices.Contains(f.RoundP50s, 0) {
					r.VsFloorRounds = make([]float64, len(r.RoundP50s))
					for i, p := range r.RoundP50s {
						r.VsFloorRounds[i] = float64(p) / float64(f.RoundP50s[i])
					}
					r.VsFloor = median(r.VsFloorRounds)
				}
			}
			if b := find(func(o *Row) bool {
				return o.Series == "broker/unix" && o.Scenario == r.Scenario && o.Method == r.Method && o.Readers == r.Readers && o.Producers == r.Producers && o.Size == r.Size
			}); b != nil && b.Latency.P50 > 0 {
				r.VsBroker = float64(r.Latency.P50) / float64(b.Latency.P50)
			}
			continue
		}
		if r.EventsPerSec == 0 {
			continue
		}
		if r.Series != seriesSPSC {
			if f := find(func(o *Row) bool { return o.Series == seriesSPSC && o.Size == r.Size }); f != nil && f.EventsPerSec > 0 {
				r.FloorSeries, r.VsFloor = seriesSPSC, r.EventsPerSec/f.EventsPerSec
			}
		}
		if b := find(func(o *Row) bool {
			return o.Series == "broker/unix" && o.Scenario == r.Scenario && o.Readers == r.Readers && o.Producers == r.Producers && o.Size == r.Size
		}); b != nil && b.EventsPerSec > 0 {
			r.VsBroker = r.EventsPerSec / b.EventsPerSec
		}
	}
}

func fmtSize(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}
