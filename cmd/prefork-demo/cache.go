package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/shmring/shmring/events"
	"github.com/shmring/shmring/workerpool"
)

// demo is one worker's state: its cache and its counters.
type demo struct {
	bus   *events.Bus
	index int

	mu      sync.Mutex
	changed chan struct{} // closed and replaced when the cache changes
	cache   map[string]entry
	seen    uint64 // ring events handled
	lastSeq uint64 // the last one's sequence number
	fetches uint64 // origin fetches (refreshes this worker ran)
	applied uint64 // "set" events applied
	stale   uint64 // "set" events older than the entry (skipped, counted)
	// liveFrom is the ring's next sequence when this worker opened its
	// bus: earlier events are replays of history (the bus starts at
	// Oldest to rebuild the cache).
	liveFrom     uint64
	replayed     uint64 // refreshes replayed from history, not run (counted)
	setNotPosted uint64 // refreshes whose cache/set could not be posted (counted, logged)
	// snaps holds the stats taken at recent "stats" requests, by the
	// request's sequence number: the same point in every worker.
	snaps map[uint64]workerStats
}

// maxSnaps bounds snaps; an action finds its own long before it is evicted.
const maxSnaps = 64

// entry is one cached value and the purge event that produced it.
type entry struct {
	Value   string `json:"value"`
	Version uint64 `json:"version"`
	By      int    `json:"by"` // the worker that fetched it
}

// setMsg is the payload of cache/set.
type setMsg struct {
	Key string `json:"key"`
	entry
}

// origin stands for a slow backing store: the value of key as of version
// (the sequence number of the purge that asked for it).
func origin(key string, version uint64) string {
	sum := sha256.Sum256([]byte(fmt.Sprintf("%s@%d", key, version)))
	return fmt.Sprintf("%s-v%d-%s", key, version, hex.EncodeToString(sum[:4]))
}

// setup registers the worker's handlers before its bus polls.
func (d *demo) setup(b *events.Bus) {
	d.bus = b
	d.liveFrom = b.Ring().Next()
	d.index = workerpool.Index()
	d.cache = map[string]entry{}
	d.snaps = map[uint64]workerStats{}
	d.changed = make(chan struct{})
	b.Register(d.count, "")
	// Unique: exactly one worker runs it per purge (and per coalesced burst).
	b.Register(d.refresh, "cache", "refresh")
	b.Register(d.apply, "cache", "set")
	// Registered before the pool's own handler of the request, which
	// starts the action: the snapshot is there when the action looks.
	b.Register(d.snapshot, workerpool.Source, workerpool.EventExec)
}

func (d *demo) count(e *events.Event) {
	if e.Local {
		return
	}
	d.mu.Lock()
	d.seen++
	d.lastSeq = e.Seq
	d.mu.Unlock()
}

func (d *demo) refresh(e *events.Event) {
	if e.Seq < d.liveFrom {
		// A purge from before this worker started: it was answered then
		// (refreshed or coalesced), and its "set", if any, is in the
		// history this worker replays. The bus skips a replayed purge
		// that another worker took, or that was a follow-up; this skips
		// one that no worker took before this one started too.
		d.mu.Lock()
		d.replayed++
		d.mu.Unlock()
		return
	}
	key := string(e.Data)
	msg := setMsg{Key: key, entry: entry{Value: origin(key, e.Seq), Version: e.Seq, By: d.index}}
	d.mu.Lock()
	d.fetches++
	d.mu.Unlock()
	b, _ := json.Marshal(msg)
	if _, err := d.bus.Publish("cache", "set", b); err != nil {
		d.mu.Lock()
		d.setNotPosted++
		d.mu.Unlock()
		fmt.Fprintf(os.Stderr, "prefork-demo: worker %d: post cache/set: %v\n", d.index, err)
	}
}

func (d *demo) apply(e *events.Event) {
	var m setMsg
	if err := e.JSON(&m); err != nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if cur, ok := d.cache[m.Key]; ok && cur.Version >= m.Version {
		d.stale++
		return
	}
	d.cache[m.Key] = m.entry
	d.applied++
	close(d.changed)
	d.changed = make(chan struct{})
}

// main is the worker's body: the HTTP server, once the cache is warm.
func (d *demo) main(ctx context.Context, w *workerpool.Worker) error {
	if err := d.warmUp(ctx); err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /purge", d.handlePurge)
	mux.HandleFunc("GET /cache", d.handleGet)
	mux.HandleFunc("GET /stats", d.handleStats)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return workerpool.ServeHTTP(ctx, srv, w.Listeners...)
}

// warmUp waits until the bus has replayed what the ring held when the
// worker started, so that a new worker answers from a rebuilt cache: it
// posts a marker and waits for it to come round (events come in order).
func (d *demo) warmUp(ctx context.Context) error {
	warm := make(chan struct{})
	var once sync.Once
	reg := d.bus.Register(func(e *events.Event) {
		if e.PID == os.Getpid() {
			once.Do(func() { close(warm) })
		}
	}, "demo", "warm")
	defer reg.Unregister()
	if _, err := d.bus.Publish("demo", "warm", nil); err != nil {
		return fmt.Errorf("warm up: %w", err)
	}
	select {
	case <-warm:
		return nil
	case <-ctx.Done():
		return nil
	case <-d.bus.Done():
		return fmt.Errorf("warm up: %w", d.bus.Err())
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// handlePurge posts a unique refresh for the key, then waits (a little) for
// the new value to reach this worker's cache.
func (d *demo) handlePurge(w http.ResponseWriter, r *http.Request) {
	key := r.URL.Query().Get("key")
	if key == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "key is required"})
		return
	}
	seq, err := d.bus.PublishUnique("cache", "refresh", []byte(key), "refresh:"+key)
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
		return
	}
	deadline := time.NewTimer(2 * purgeCoalesce)
	defer deadline.Stop()
	for {
		d.mu.Lock()
		e, ok := d.cache[key]
		changed := d.changed
		d.mu.Unlock()
		if ok && e.Version >= seq {
			writeJSON(w, http.StatusOK, map[string]any{"key": key, "purge_seq": seq, "answered_by": d.index, "entry": e})
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			// Another purge of the key within purgeCoalesce: that one's
			// refresh stands for this one.
			writeJSON(w, http.StatusAccepted, map[string]any{"key": key, "purge_seq": seq, "answered_by": d.index,
				"note": "coalesced with an earlier purge of the key; its value stands", "entry": e})
			return
		case <-r.Context().Done():
			return
		}
	}
}

func (d *demo) handleGet(w http.ResponseWriter, r *http.Request) {
	key := r.URL.Query().Get("key")
	d.mu.Lock()
	e, ok := d.cache[key]
	d.mu.Unlock()
	if !ok {
		writeJSON(w, http.StatusNotFound, map[string]any{"key": key, "answered_by": d.index, "error": "not cached; POST /purge?key=" + key + " loads it"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"key": key, "answered_by": d.index, "entry": e})
}

// workerStats is one worker's answer to the "stats" action.
type workerStats struct {
	Index      int    `json:"index"`
	PID        int    `json:"pid"`
	EventsSeen uint64 `json:"events_seen"`
	LastSeq    uint64 `json:"last_seq"`
	Fetches    uint64 `json:"origin_fetches"`
	Applied    uint64 `json:"sets_applied"`
	Stale      uint64 `json:"sets_stale"`
	Replayed   uint64 `json:"refreshes_replayed_skipped"`
	NotPosted  uint64 `json:"sets_not_posted"`
	Keys       int    `json:"keys"`
	Digest     string `json:"cache_digest"`
	Lost       uint64 `json:"events_lost"`
	UniqueRun  uint64 `json:"unique_run"`
	UniqueIgn  uint64 `json:"unique_ignored"`
	// UniqueStale: unique winners the bus skipped because the ring moved
	// a whole index past them first (see events.Stats.UniqueStale); with
	// them, events_seen + unique_ignored + unique_stale = last_seq + 1.
	UniqueStale uint64 `json:"unique_stale,omitempty"`
}

// snapshot takes this worker's stats at an exec request, in the order of
// events, so that every worker's answer describes the same point.
func (d *demo) snapshot(e *events.Event) {
	st := d.stats()
	st.LastSeq = e.Seq // the count handler has just seen this very event
	d.mu.Lock()
	if len(d.snaps) >= maxSnaps {
		for seq := range d.snaps {
			if e.Seq >= maxSnaps && seq < e.Seq-maxSnaps { // no wrap below maxSnaps
				delete(d.snaps, seq)
			}
		}
	}
	d.snaps[e.Seq] = st
	d.mu.Unlock()
}

func (d *demo) stats() workerStats {
	d.mu.Lock()
	keys := make([]string, 0, len(d.cache))
	for k := range d.cache {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	h := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(h, "%s=%s@%d\n", k, d.cache[k].Value, d.cache[k].Version)
	}
	st := workerStats{
		Index: d.index, PID: os.Getpid(), EventsSeen: d.seen, LastSeq: d.lastSeq,
		Fetches: d.fetches, Applied: d.applied, Stale: d.stale, Replayed: d.replayed, NotPosted: d.setNotPosted, Keys: len(keys),
		Digest: hex.EncodeToString(h.Sum(nil)[:8]),
	}
	d.mu.Unlock()
	bs := d.bus.Stats()
	st.Lost, st.UniqueRun, st.UniqueIgn, st.UniqueStale = bs.Lost, bs.UniqueRun, bs.UniqueIgnored, bs.UniqueStale
	return st
}

// statsAction reports the stats this worker took at the request.
func (d *demo) statsAction(ctx context.Context, _ []string, out io.Writer) error {
	seq, _ := workerpool.ExecSeq(ctx)
	d.mu.Lock()
	st, ok := d.snaps[seq]
	d.mu.Unlock()
	if !ok {
		return fmt.Errorf("no snapshot at request %d", seq)
	}
	return json.NewEncoder(out).Encode(st)
}

// handleStats gathers every worker's counters over the bus (an exec of
// "stats") and says whether their caches agree.
func (d *demo) handleStats(w http.ResponseWriter, r *http.Request) {
	res, err := workerpool.Exec(r.Context(), d.bus, "stats", nil, workerpool.ExecOptions{Timeout: 2 * time.Second})
	if res == nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
		return
	}
	out := struct {
		AnsweredBy int           `json:"answered_by"`
		Workers    []workerStats `json:"workers"`
		Missing    []string      `json:"missing"`
		Agree      bool          `json:"agree"`
		Error      string        `json:"error,omitempty"`
	}{AnsweredBy: d.index, Workers: []workerStats{}, Missing: []string{}}
	for _, wr := range res.Workers {
		var st workerStats
		if json.Unmarshal(wr.Output, &st) == nil {
			out.Workers = append(out.Workers, st)
		}
	}
	for _, id := range res.Missing {
		out.Missing = append(out.Missing, id.String())
	}
	// At the request's point in the one order of events, every worker has
	// handled the same events: the same last sequence, the same cache.
	out.Agree = len(out.Workers) > 0
	for _, st := range out.Workers {
		if st.Digest != out.Workers[0].Digest || st.LastSeq != out.Workers[0].LastSeq {
			out.Agree = false
		}
	}
	code := http.StatusOK
	if err != nil {
		out.Error = strings.ReplaceAll(err.Error(), "\n", "; ")
		if errors.Is(err, workerpool.ErrIncomplete) {
			code = http.StatusPartialContent
		}
	}
	writeJSON(w, code, out)
}
