package ring

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shmring/shmring/internal/testproc"
	"github.com/shmring/shmring/shm"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Multi-process tests of package ring. The test binary re-executes itself in
// the roles below; children open the ring by path, print short lines on
// stdout that the parent waits for (testproc.Proc.Expect), and write what
// they read to files under the test's TempDir, which the parent compares.
//
// Every record carries its own checksum (see makeRecord), so a reader checks
// each payload independently of the ring's CRC.

// TestHelperProcess is the entry point of every child process: it runs the
// role named by testproc.Start and exits, and returns at once otherwise.
func TestHelperProcess(t *testing.T) {
	testproc.Serve(map[string]testproc.Role{
		"producer":   roleProducer,
		"reader":     roleReader,
		"stuck":      roleStuck,
		"registered": roleRegistered,
	})
}

// ---------------------------------------------------------------------------
// Records.

const (
	// recordHeader: SHA-256 prefix (8) | producer id (4) | counter (8).
	recordHeader = 20
	// markerID: producer ids from here on are round markers (round =
	// id - markerID); readers told to count rounds stop at them.
	markerID = 1 << 30
	// badID marks, in a reader's output, a record that failed its check.
	badID = 1<<32 - 1
)

// makeRecord is record number counter of producer id: the header, then a
// filler of 0..maxFiller pseudo-random bytes (length and contents fixed by id
// and counter), with the first 8 bytes of the SHA-256 of everything after
// them in front.
func makeRecord(id uint32, counter uint64, maxFiller int) []byte {
	rng := rand.New(rand.NewPCG(uint64(id), counter))
	n := 0
	if maxFiller > 0 {
		n = rng.IntN(maxFiller + 1)
	}
	p := make([]byte, recordHeader+n)
	binary.LittleEndian.PutUint32(p[8:], id)
	binary.LittleEndian.PutUint64(p[12:], counter)
	for i := recordHeader; i < len(p); i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], rng.Uint64())
		copy(p[i:], w[:])
	}
	sum := sha256.Sum256(p[8:])
	copy(p, sum[:8])
	return p
}

// checkRecord verifies a record made by makeRecord and returns its id and
// counter.
func checkRecord(p []byte) (id uint32, counter uint64, ok bool) {
	if len(p) < recordHeader {
		return 0, 0, false
	}
	sum := sha256.Sum256(p[8:])
	if !bytes.Equal(sum[:8], p[:8]) {
		return 0, 0, false
	}
	return binary.LittleEndian.Uint32(p[8:]), binary.LittleEndian.Uint64(p[12:]), true
}

// TestRecordRoundTrip: test records are deterministic, no longer than their
// header and largest filler, give back their id and counter, and any flipped
// byte fails their check.
func TestRecordRoundTrip(t *testing.T) {
	for _, c := range []struct {
		id      uint32
		counter uint64
		filler  int
	}{{0, 0, 0}, {3, 19999, 150}, {markerID + 4, 0, 0}, {7, 1 << 40, 400}} {
		p := makeRecord(c.id, c.counter, c.filler)
		assert.Equal(t, p, makeRecord(c.id, c.counter, c.filler), "records are deterministic")
		assert.LessOrEqual(t, len(p), recordHeader+c.filler)
		id, counter, ok := checkRecord(p)
		require.True(t, ok)
		assert.Equal(t, c.id, id)
		assert.Equal(t, c.counter, counter)
		for i := range p {
			q := bytes.Clone(p)
			q[i] ^= 0x40
			_, _, ok := checkRecord(q)
			assert.False(t, ok, "a flipped byte %d is detected", i)
		}
	}
}

// seenRecord is one record as a reader delivered it.
type seenRecord struct {
	Seq     uint64
	ID      uint32 // badID if the record failed its check
	Counter uint64
}

const seenSize = 20

func (s seenRecord) append(b []byte) []byte {
	b = binary.LittleEndian.AppendUint64(b, s.Seq)
	b = binary.LittleEndian.AppendUint32(b, s.ID)
	return binary.LittleEndian.AppendUint64(b, s.Counter)
}

func loadSeen(t *testing.T, path string) []seenRecord {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Zero(t, len(b)%seenSize, "%s: whole entries", path)
	out := make([]seenRecord, 0, len(b)/seenSize)
	for ; len(b) > 0; b = b[seenSize:] {
		out = append(out, seenRecord{
			Seq:     binary.LittleEndian.Uint64(b),
			ID:      binary.LittleEndian.Uint32(b[8:]),
			Counter: binary.LittleEndian.Uint64(b[12:]),
		})
	}
	return out
}

// ---------------------------------------------------------------------------
// Role arguments: key=value words.

type roleArgs map[string]string

func parseRoleArgs(args []string) roleArgs {
	kv := roleArgs{}
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok {
			panic(fmt.Sprintf("role argument %q: want key=value", a))
		}
		kv[k] = v
	}
	return kv
}

func (kv roleArgs) str(k, def string) string {
	if v, ok := kv[k]; ok {
		return v
	}
	return def
}

func (kv roleArgs) int(k string, def int) int {
	v, ok := kv[k]
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		panic(fmt.Sprintf("role argument %s=%q: %v", k, v, err))
	}
	return n
}

func (kv roleArgs) ms(k string, def int) time.Duration {
	return time.Duration(kv.int(k, def)) * time.Millisecond
}

// ---------------------------------------------------------------------------
// Roles.

// maxMixedBatch is the largest AppendBatch of a producer with batch=0.
const maxMixedBatch = 16

// roleProducer appends records of producer id=N, counters from 0.
//
//	path=   the ring
//	id=     producer id
//	count=  records to commit; 0: until killed
//	mode=   strict: any error fails
//	        retry:  Append only; an ErrAbandoned append prints "late <seq>"
//	                and is retried with the same counter
//	        loop:   like strict, but ErrAbandoned is counted and skipped
//	batch=  0 (default): mixes Append, AppendFunc and AppendBatch of 2 to
//	        maxMixedBatch records; 1: Append only; k > 1: AppendBatch of k
//	        (the last one shorter if count requires)
//	filler= largest filler (default 100)
//	barrier=1 (default) prints "ready" and waits for the stdin barrier
//
// It prints "done <records> late <n>" at the end.
func roleProducer(args []string) error {
	kv := parseRoleArgs(args)
	r, err := Open(kv.str("path", ""), Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	id := uint32(kv.int("id", 0))
	count := uint64(kv.int("count", 0))
	mode := kv.str("mode", "strict")
	batch := kv.int("batch", 0)
	filler := kv.int("filler", 100)
	rng := rand.New(rand.NewPCG(uint64(id), 0x5eed))
	// In loop mode the records are made before the barrier, so that the
	// producer spends its time appending and a kill lands inside an append
	// more often.
	var made [][]byte
	if mode == "loop" {
		for c := range uint64(8192) {
			made = append(made, makeRecord(id, c, filler))
		}
	}
	record := func(c uint64) []byte {
		if c < uint64(len(made)) {
			return made[c]
		}
		return makeRecord(id, c, filler)
	}
	if kv.int("barrier", 1) == 1 {
		fmt.Println("ready")
		testproc.WaitStdinClosed()
	}
	late := 0
	c := uint64(0)
	for count == 0 || c < count {
		if mode == "retry" {
			seq, err := r.Append(makeRecord(id, c, filler))
			if errors.Is(err, ErrAbandoned) {
				late++
				fmt.Printf("late %d\n", seq)
				continue
			}
			if err != nil {
				return fmt.Errorf("append %d/%d: %w", id, c, err)
			}
			c++
			continue
		}
		k, kind := uint64(1), "append"
		switch {
		case batch > 1:
			k, kind = uint64(batch), "batch"
		case batch == 0:
			switch rng.IntN(4) {
			case 2:
				kind = "func"
			case 3:
				k, kind = uint64(2+rng.IntN(maxMixedBatch-1)), "batch"
			}
		}
		if count > 0 {
			k = min(k, count-c)
		}
		switch kind {
		case "append":
			_, err = r.Append(record(c))
		case "func":
			p := record(c)
			_, err = r.AppendFunc(len(p), func(dst []byte) { copy(dst, p) })
		default:
			recs := make([][]byte, k)
			for i := range recs {
				recs[i] = record(c + uint64(i))
			}
			_, err = r.AppendBatch(recs)
		}
		if err != nil {
			if mode != "loop" || !errors.Is(err, ErrAbandoned) {
				return fmt.Errorf("append %d/%d (+%d): %w", id, c, k, err)
			}
			late++
		}
		c += k
	}
	fmt.Printf("done %d late %d\n", c, late)
	return nil
}

// readerReport is what the reader role prints at the end, as
// "report <json>".
type readerReport struct {
	Slot     int
	Start    uint64 // Cursor after NewReader
	End      uint64 // Cursor at the end
	Stats    ReaderStats
	Received int // records delivered
	Bad      int // records that failed checkRecord
	BadSeqs  []uint64
	// PausedAt is the cursor when the reader paused; FirstAfterResume the
	// first sequence it delivered afterwards (-1: none).
	PausedAt         uint64
	FirstAfterResume int64
	// Rounds has, for each round marker, the reader's state just after it
	// delivered it.
	Rounds []readerRound
	// Mismatches counts the Reads after which Stats did not account for
	// exactly the sequence numbers from Start to Cursor(); MismatchAt
	// describes the first few.
	Mismatches int
	MismatchAt []string
}

type readerRound struct {
	Marker uint64 // the marker's sequence number
	Cursor uint64
	Stats  ReaderStats
}

// roleReader reads the ring and reports.
//
//	path=   the ring
//	start=  latest | oldest | a sequence number
//	wi= wm= WaitInterval and WaitMax in ms (default 2 and 60000)
//	want=   stop after this many records
//	rounds= stop at the marker of round rounds-1; print "round <i> <seq>" at
//	        each marker
//	pause=  after this many records print "paused <cursor>", wait for the
//	        stdin barrier, then read without blocking until ErrEmpty
//	out=    file for the delivered records (seenRecord entries)
//
// It prints "ready <slot> <cursor>" once registered.
func roleReader(args []string) error {
	kv := parseRoleArgs(args)
	r, err := Open(kv.str("path", ""), Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	opts := ReaderOptions{WaitInterval: kv.ms("wi", 2), WaitMax: kv.ms("wm", 60000)}
	switch s := kv.str("start", "latest"); s {
	case "latest":
		opts.Start = Latest
	case "oldest":
		opts.Start = Oldest
	default:
		seq, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return err
		}
		opts.Start = AtSeq(seq)
	}
	rd, err := r.NewReader(opts)
	if err != nil {
		return err
	}
	defer rd.Close()
	want, rounds, pause := kv.int("want", 0), kv.int("rounds", 0), kv.int("pause", -1)
	rep := readerReport{Slot: rd.Slot(), Start: rd.Cursor(), FirstAfterResume: -1}
	fmt.Printf("ready %d %d\n", rd.Slot(), rd.Cursor())

	// A bound on a hung test, not a timing assumption.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var seen []byte
	drain := false
	for want == 0 || rep.Received < want {
		if !drain && rep.Received == pause {
			rep.PausedAt = rd.Cursor()
			fmt.Printf("paused %d\n", rep.PausedAt)
			testproc.WaitStdinClosed()
			drain = true
		}
		var rec Record
		if drain {
			rec, err = rd.Read()
			if errors.Is(err, ErrEmpty) {
				break
			}
			if errors.Is(err, ErrPending) {
				if err := rd.Wait(ctx, 0); err != nil {
					return err
				}
				continue
			}
		} else {
			rec, err = rd.ReadContext(ctx)
		}
		if err != nil {
			return fmt.Errorf("read at cursor %d after %d records (%+v): %w", rd.Cursor(), rep.Received, rd.Stats(), err)
		}
		rep.Received++
		if sum, moved := statsSum(rd.Stats()), rd.Cursor()-rep.Start; sum != moved {
			rep.Mismatches++
			if len(rep.MismatchAt) < 8 {
				rep.MismatchAt = append(rep.MismatchAt, fmt.Sprintf("after seq %d: Cursor() %d, moved past %d, stats %+v account for %d",
					rec.Seq, rd.Cursor(), moved, rd.Stats(), sum))
			}
		}
		if drain && rep.FirstAfterResume < 0 {
			rep.FirstAfterResume = int64(rec.Seq)
		}
		id, counter, ok := checkRecord(rec.Data)
		if !ok {
			rep.Bad++
			if len(rep.BadSeqs) < 16 {
				rep.BadSeqs = append(rep.BadSeqs, rec.Seq)
			}
			id, counter = badID, 0
		}
		seen = seenRecord{Seq: rec.Seq, ID: id, Counter: counter}.append(seen)
		if ok && id >= markerID && int(id-markerID) == len(rep.Rounds) {
			rep.Rounds = append(rep.Rounds, readerRound{Marker: rec.Seq, Cursor: rd.Cursor(), Stats: rd.Stats()})
			fmt.Printf("round %d %d\n", len(rep.Rounds)-1, rec.Seq)
			if len(rep.Rounds) == rounds {
				break
			}
		}
	}
	rep.End, rep.Stats = rd.Cursor(), rd.Stats()
	if out := kv.str("out", ""); out != "" {
		if err := os.WriteFile(out, seen, 0o600); err != nil {
			return err
		}
	}
	b, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	fmt.Printf("report %s\n", b)
	return nil
}

// roleStuck appends one record of producer id and stops inside the append at
// a hook point, after printing "claimed <seq>", until its stdin is closed (or
// it is killed). Then it prints "append <seq> abandoned=<bool>" and appends
// the marker of round 0 (retrying while readers abandon it, printing
// "late <seq>"), and prints "marker <seq>".
//
//	path=  the ring
//	point= claimed (HookClaimed: seq claimed, commit CAS not tried)
//	id=    producer id
func roleStuck(args []string) error {
	kv := parseRoleArgs(args)
	r, err := Open(kv.str("path", ""), Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	if p := kv.str("point", "claimed"); p != "claimed" {
		return fmt.Errorf("point %q", p)
	}
	point := HookClaimed
	stopped := false
	SetHook(r, func(p HookPoint, seq uint64) {
		if p != point || stopped {
			return
		}
		stopped = true
		fmt.Printf("claimed %d\n", seq)
		// Blocks in read(2) until the parent closes stdin or kills us.
		testproc.WaitStdinClosed()
	})
	seq, err := r.Append(makeRecord(uint32(kv.int("id", 0)), 0, 50))
	fmt.Printf("append %d abandoned=%t err=%v\n", seq, errors.Is(err, ErrAbandoned), err)
	SetHook(r, nil)
	for {
		seq, err := r.Append(makeRecord(markerID, 0, 0))
		if errors.Is(err, ErrAbandoned) {
			fmt.Printf("late %d\n", seq)
			continue
		}
		if err != nil {
			return err
		}
		fmt.Printf("marker %d\n", seq)
		return nil
	}
}

// roleRegistered takes a reader slot, prints "slot <n>", and then either
// waits for the stdin barrier (mode=idle), or prints "waiting" and sleeps
// until it is killed: in Reader.Wait (mode=wait) or in Reader.ReadContext
// (mode=read), with nothing ever appended.
func roleRegistered(args []string) error {
	kv := parseRoleArgs(args)
	r, err := Open(kv.str("path", ""), Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	rd, err := r.NewReader(ReaderOptions{})
	if err != nil {
		return err
	}
	defer rd.Close()
	fmt.Printf("slot %d\n", rd.Slot())
	switch mode := kv.str("mode", "idle"); mode {
	case "idle":
		testproc.WaitStdinClosed()
		return nil
	case "wait":
		fmt.Println("waiting")
		err = rd.Wait(context.Background(), 0)
		return fmt.Errorf("Wait returned (%v) with nothing appended", err)
	case "read":
		fmt.Println("waiting")
		rec, err := rd.ReadContext(context.Background())
		return fmt.Errorf("ReadContext returned (seq %d, %v) with nothing appended", rec.Seq, err)
	default:
		return fmt.Errorf("mode %q", mode)
	}
}

// ---------------------------------------------------------------------------
// Parent helpers.

const procTimeout = time.Minute // bounds a hung child; never a timing assertion

// startProc starts a child in role with args. Its children exit at once
// under -race: by default the race runtime sleeps a second before a process
// exits (GORACE atexit_sleep_ms), which every child that ends normally would
// add to the test's time. The setting changes nothing without -race.
func startProc(t *testing.T, role string, args ...string) *testproc.Proc {
	t.Helper()
	if v := os.Getenv("GORACE"); !strings.Contains(v, "atexit_sleep_ms") {
		t.Setenv("GORACE", strings.TrimSpace(v+" atexit_sleep_ms=0"))
	}
	return testproc.Start(t, role, args...)
}

// startReaders starts n reader processes with args, each writing what it
// delivers to its own file (returned), and waits until all are registered.
func startReaders(t *testing.T, n int, args ...string) ([]*testproc.Proc, []string) {
	t.Helper()
	dir := t.TempDir()
	var ps []*testproc.Proc
	var outs []string
	for i := range n {
		out := filepath.Join(dir, fmt.Sprintf("reader%d", i))
		ps = append(ps, startProc(t, "reader", append(slices.Clone(args), "out="+out)...))
		outs = append(outs, out)
	}
	for _, p := range ps {
		expectLine(t, p, "ready")
	}
	return ps, outs
}

func createRing(t *testing.T, g shm.Geometry) (string, *Ring) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ring")
	r, err := Open(path, Options{Geometry: g})
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })
	return path, r
}

func expectLine(t *testing.T, p *testproc.Proc, prefix string) string {
	t.Helper()
	line, err := p.Expect(prefix, procTimeout)
	require.NoError(t, err)
	return line
}

// lineField parses the integer at word position i of a line
// "word N word N ...".
func lineField(t *testing.T, line string, i int) uint64 {
	t.Helper()
	f := strings.Fields(line)
	require.Greater(t, len(f), i, "line %q", line)
	n, err := strconv.ParseUint(f[i], 10, 64)
	require.NoError(t, err, "line %q", line)
	return n
}

// reportOf waits for a reader's report and for the reader to exit.
func reportOf(t *testing.T, p *testproc.Proc) readerReport {
	t.Helper()
	line := expectLine(t, p, "report ")
	var rep readerReport
	require.NoError(t, json.Unmarshal([]byte(strings.TrimPrefix(line, "report ")), &rep))
	require.NoError(t, p.Wait(procTimeout))
	return rep
}

// lateSeqs returns the sequence numbers of the "late <seq>" lines p printed.
func lateSeqs(t *testing.T, p *testproc.Proc) []uint64 {
	var late []uint64
	for _, l := range p.Lines() {
		if strings.HasPrefix(l, "late ") {
			late = append(late, lineField(t, l, 1))
		}
	}
	return late
}

func statsSum(s ReaderStats) uint64 { return s.Received + s.Lost + s.Abandoned + s.Corrupt }

// checkStream checks what one reader delivered: intact records, strictly
// increasing sequence numbers, and each producer's counters strictly
// increasing.
func checkStream(t *testing.T, name string, seen []seenRecord) {
	t.Helper()
	last := map[uint32]uint64{}
	for j, s := range seen {
		require.NotEqual(t, uint32(badID), s.ID, "%s: record %d (seq %d) failed its checksum: torn or foreign bytes delivered", name, j, s.Seq)
		if j > 0 {
			require.Greater(t, s.Seq, seen[j-1].Seq, "%s: record %d: sequence numbers strictly increase", name, j)
		}
		if c, ok := last[s.ID]; ok {
			require.Greater(t, s.Counter, c, "%s: seq %d: producer %d's records in its own order", name, s.Seq, s.ID)
		}
		last[s.ID] = s.Counter
	}
}

// poll waits, with a deadline, until cond holds.
func poll(t *testing.T, cond func() bool, format string, args ...any) {
	t.Helper()
	if !pollFor(procTimeout, cond) {
		require.FailNow(t, "timed out waiting: "+fmt.Sprintf(format, args...))
	}
}

// pollFor polls cond until it holds or d has passed, and reports whether
// it held.
func pollFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	tick := time.NewTicker(100 * time.Microsecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}

// ---------------------------------------------------------------------------
// Tests.

// TestProcessesSeeOneOrder: 3 reader processes, and 4 producer processes that
// start together and append 20,000 records each to a ring that holds them
// all: one mixing Append, AppendFunc and AppendBatch, one with Append only,
// one with batches of 7 and one with batches of 64. Every reader delivers
// every record exactly once, intact, at sequence numbers 0..79999 in order,
// with the same sequence-to-record mapping in all readers; each producer's
// records appear complete and in its own order; nothing is lost, abandoned,
// corrupt, late or too big.
func TestProcessesSeeOneOrder(t *testing.T) {
	const producers, each, readers = 4, 20000, 3
	const total = producers * each
	g := shm.Geometry{IndexSlots: 1 << 17, DataBytes: 1 << 24}
	path, r := createRing(t, g)

	// WaitMax is far beyond any scheduling delay: no producer dies here, so
	// nothing may be abandoned, however slow the machine.
	rs, outs := startReaders(t, readers, "path="+path, "start=0", "want="+strconv.Itoa(total), "wm=60000")
	var ps []*testproc.Proc
	for i, batch := range []string{"0", "1", "7", "64"} {
		ps = append(ps, startProc(t, "producer", "path="+path, "id="+strconv.Itoa(i),
			"count="+strconv.Itoa(each), "mode=strict", "batch="+batch, "filler=150"))
	}
	for _, p := range ps {
		expectLine(t, p, "ready")
	}
	for _, p := range ps {
		require.NoError(t, p.Stdin.Close()) // the barrier: all start together
	}
	for i, p := range ps {
		assert.Equal(t, fmt.Sprintf("done %d late 0", each), expectLine(t, p, "done "), "producer %d", i)
		require.NoError(t, p.Wait(procTimeout))
	}

	var streams [][]seenRecord
	for i, p := range rs {
		rep := reportOf(t, p)
		name := fmt.Sprintf("reader %d", i)
		assert.Equal(t, ReaderStats{Received: total}, rep.Stats, "%s: everything received, nothing lost, abandoned or corrupt", name)
		assert.Zero(t, rep.Bad, "%s: records failing their own checksum: %v", name, rep.BadSeqs)
		assert.Equal(t, uint64(0), rep.Start, name)
		assert.Equal(t, uint64(total), rep.End, name)
		seen := loadSeen(t, outs[i])
		require.Len(t, seen, total, name)
		checkStream(t, name, seen)
		for j, s := range seen {
			require.Equal(t, uint64(j), s.Seq, "%s: record %d", name, j)
		}
		next := make([]uint64, producers)
		for _, s := range seen {
			require.Less(t, s.ID, uint32(producers), "%s: seq %d from an unknown producer", name, s.Seq)
			require.Equal(t, next[s.ID], s.Counter, "%s: seq %d: producer %d's counters complete and in order", name, s.Seq, s.ID)
			next[s.ID]++
		}
		for id, n := range next {
			assert.Equal(t, uint64(each), n, "%s: all of producer %d's records", name, id)
		}
		streams = append(streams, seen)
	}
	for i := 1; i < len(streams); i++ {
		require.True(t, slices.Equal(streams[0], streams[i]), "reader %d delivered another order than reader 0", i)
	}
	c := r.Counters()
	assert.Equal(t, uint64(total), c.Next)
	assert.LessOrEqual(t, c.DataTail, g.DataBytes, "the data ring held every record")
	assert.Zero(t, c.Abandoned, "abandoned entries")
	assert.Zero(t, c.LateCommits, "late commits")
	assert.Zero(t, c.TooBig)
}

// TestKilledProducerIsSkippedByEveryone: a producer process stops inside its
// first append, between its claim and its commit CAS (at HookClaimed: the
// entry still holds its old word, zero on a fresh ring or the previous lap's
// committed record on a lapped one), and is SIGKILLed. Another producer
// process then appends K records. Three reader processes with a short WaitMax
// each skip the dead entry, count it as abandoned, and deliver all K later
// records in order; the ring counts the abandon once although all three
// readers race to make it, and a reader that comes afterwards sees the same.
//
// A live producer descheduled longer than WaitMax between claim and commit
// would have its entry abandoned too; it then gets ErrAbandoned, prints
// "late <seq>" and retries, and those seqs are expected as gaps as well.
func TestKilledProducerIsSkippedByEveryone(t *testing.T) {
	const K, readers, slots = 1000, 3, 1024
	for _, c := range []struct {
		name    string
		point   string
		prefill int // records appended before: slots+7 puts the dead claim on a used entry
	}{
		{"claimed", "claimed", 0},
		{"claimed-lapped", "claimed", slots + 7},
	} {
		t.Run(c.name, func(t *testing.T) {
			path, r := createRing(t, shm.Geometry{IndexSlots: slots, DataBytes: 1 << 20})
			for i := range c.prefill {
				_, err := r.Append(makeRecord(50, uint64(i), 60))
				require.NoError(t, err)
			}
			start := r.Counters().Next
			rs, outs := startReaders(t, readers, "path="+path, "start="+strconv.FormatUint(start, 10),
				"want="+strconv.Itoa(K), "wi=2", "wm=100")

			stuck := startProc(t, "stuck", "path="+path, "point="+c.point, "id=9")
			dead := lineField(t, expectLine(t, stuck, "claimed "), 1)
			require.Equal(t, start, dead, "the stuck producer claimed the next sequence number")
			require.True(t, stuck.Kill(), "the stuck producer died of SIGKILL")

			p := startProc(t, "producer", "path="+path, "id=1", "count="+strconv.Itoa(K), "mode=retry", "filler=100", "barrier=0")
			expectLine(t, p, "done ")
			require.NoError(t, p.Wait(procTimeout))
			late := lateSeqs(t, p)
			if len(late) > 0 {
				t.Logf("the live producer was abandoned %d times (descheduled past WaitMax): %v", len(late), late)
			}
			gaps := append([]uint64{dead}, late...)
			slices.Sort(gaps)

			for i, rp := range rs {
				name := fmt.Sprintf("reader %d", i)
				rep := reportOf(t, rp)
				assert.Equal(t, ReaderStats{Received: K, Abandoned: uint64(len(gaps))}, rep.Stats,
					"%s: the dead entry abandoned once, all %d later records received", name, K)
				assert.Zero(t, rep.Bad, "%s: %v", name, rep.BadSeqs)
				assert.Equal(t, start, rep.Start, name)
				assert.Equal(t, start+K+uint64(len(gaps)), rep.End, name)
				seen := loadSeen(t, outs[i])
				require.Len(t, seen, K, name)
				checkStream(t, name, seen)
				// The records are producer 1's 0..K-1, in order, at every
				// sequence number from start on except the gaps.
				var missing []uint64
				want := start
				for j, s := range seen {
					for ; want < s.Seq; want++ {
						missing = append(missing, want)
					}
					want++
					require.Equal(t, seenRecord{Seq: s.Seq, ID: 1, Counter: uint64(j)}, s, "%s: record %d", name, j)
				}
				assert.Equal(t, gaps, missing, "%s: the sequence numbers skipped", name)
			}
			cn := r.Counters()
			assert.Equal(t, uint64(len(gaps)), cn.Abandoned, "the dead entry is abandoned exactly once, globally")
			assert.Equal(t, uint64(len(late)), cn.LateCommits, "the dead producer never comes back")
			assert.Equal(t, start+K+uint64(len(gaps)), cn.Next)
			// Ring state after the fact: an observer from the dead claim on sees
			// the same thing.
			rd, err := r.NewReader(ReaderOptions{Start: AtSeq(start), Unregistered: true, WaitMax: time.Minute})
			require.NoError(t, err)
			defer rd.Close()
			n := 0
			for {
				rec, err := rd.Read()
				if errors.Is(err, ErrEmpty) {
					break
				}
				require.NoError(t, err)
				require.NotEqual(t, dead, rec.Seq, "the dead entry is never delivered")
				n++
			}
			assert.Equal(t, K, n)
			assert.Equal(t, ReaderStats{Received: K, Abandoned: uint64(len(gaps))}, rd.Stats())
		})
	}
}

// TestLateProducerGetsErrAbandoned: a producer process pauses inside its
// append at HookClaimed; reader processes wait WaitMax and abandon its entry;
// then the producer goes on. Its Append returns ErrAbandoned, the ring counts
// one late commit, and no reader ever delivers that record; the producer's
// next append (a marker) is delivered normally.
func TestLateProducerGetsErrAbandoned(t *testing.T) {
	const readers = 2
	path, r := createRing(t, shm.Geometry{IndexSlots: 1024, DataBytes: 1 << 20})
	stuck := startProc(t, "stuck", "path="+path, "point=claimed", "id=9")
	require.Equal(t, uint64(0), lineField(t, expectLine(t, stuck, "claimed "), 1))
	// The readers start once the entry is claimed, and find it not committed.
	rs, outs := startReaders(t, readers, "path="+path, "start=0", "rounds=1", "wi=2", "wm=50")
	poll(t, func() bool { return r.Counters().Abandoned == 1 }, "a reader abandons the stuck entry after WaitMax")
	require.NoError(t, stuck.Stdin.Close()) // release the producer
	assert.Equal(t, "append 0 abandoned=true", strings.SplitN(expectLine(t, stuck, "append "), " err=", 2)[0],
		"the late producer's Append fails with ErrAbandoned")
	marker := lineField(t, expectLine(t, stuck, "marker "), 1)
	require.NoError(t, stuck.Wait(procTimeout))
	late := lateSeqs(t, stuck) // marker appends abandoned by a descheduling (rare)

	cn := r.Counters()
	assert.Equal(t, uint64(1+len(late)), cn.LateCommits, "one late commit")
	assert.Equal(t, uint64(1+len(late)), cn.Abandoned, "one abandoned entry")
	assert.Equal(t, marker+1, cn.Next)
	for i, p := range rs {
		name := fmt.Sprintf("reader %d", i)
		rep := reportOf(t, p)
		assert.Equal(t, ReaderStats{Received: 1, Abandoned: uint64(1 + len(late))}, rep.Stats, name)
		seen := loadSeen(t, outs[i])
		assert.Equal(t, []seenRecord{{Seq: marker, ID: markerID}}, seen, "%s: only the marker, never the late record", name)
	}
	// Nor does a reader that comes later.
	rd, err := r.NewReader(ReaderOptions{Start: AtSeq(0), Unregistered: true})
	require.NoError(t, err)
	defer rd.Close()
	rec, err := rd.Read()
	require.NoError(t, err)
	assert.Equal(t, marker, rec.Seq)
	_, err = rd.Read()
	assert.ErrorIs(t, err, ErrEmpty)
}

// TestSlowReaderProcessCountsExactLoss: a reader process reads 10 records,
// then stops while a producer process appends 5,000 records of 20..420 bytes
// to a ring of 64 entries and 8 KiB, lapping the index and overwriting the
// data ring many times. When the reader resumes and reads until ErrEmpty it
// has received or counted lost every record since it started, lost all but
// the few still in the ring, and delivered only intact records in increasing
// order, resuming at the oldest record still in the ring and missing none
// from there on up to the newest.
func TestSlowReaderProcessCountsExactLoss(t *testing.T) {
	const first, more, slots = 10, 5000, 64
	path, r := createRing(t, shm.Geometry{IndexSlots: slots, DataBytes: 8192})
	rs, outs := startReaders(t, 1, "path="+path, "start=0", "pause="+strconv.Itoa(first))
	rd := rs[0]
	for i := range first {
		_, err := r.Append(makeRecord(1, uint64(i), 400))
		require.NoError(t, err)
	}
	assert.Equal(t, "paused 10", expectLine(t, rd, "paused "))

	p := startProc(t, "producer", "path="+path, "id=2", "count="+strconv.Itoa(more), "mode=strict", "filler=400", "barrier=0")
	expectLine(t, p, "done ")
	require.NoError(t, p.Wait(procTimeout))
	total := r.Counters().Next
	require.Equal(t, uint64(first+more), total)
	oldest := r.Oldest()
	require.Greater(t, oldest, total-slots, "the data ring, not only the index, was overwritten past the reader")
	require.NoError(t, rd.Stdin.Close())

	rep := reportOf(t, rd)
	st := rep.Stats
	assert.Equal(t, uint64(first), rep.PausedAt)
	assert.Equal(t, total, rep.End, "caught up")
	assert.Equal(t, total, st.Received+st.Lost, "every record received or counted lost")
	assert.Zero(t, st.Abandoned, "abandoned")
	assert.Zero(t, st.Corrupt, "corrupt")
	assert.Greater(t, st.Lost, uint64(more-slots), "lost all but what the ring still held")
	assert.Zero(t, rep.Bad, "torn records delivered: %v", rep.BadSeqs)
	seen := loadSeen(t, outs[0])
	require.Equal(t, int(st.Received), len(seen))
	checkStream(t, "reader", seen)
	require.Greater(t, len(seen), first)
	for j := range first {
		assert.Equal(t, seenRecord{Seq: uint64(j), ID: 1, Counter: uint64(j)}, seen[j])
	}
	assert.GreaterOrEqual(t, rep.FirstAfterResume, int64(oldest), "resumed at a record still in the ring")
	assert.Equal(t, int64(oldest), rep.FirstAfterResume, "resumed at the oldest record still in the ring")
	// From there on nothing was lost: the ring was quiet.
	for j, s := range seen[first:] {
		require.Equal(t, uint64(rep.FirstAfterResume)+uint64(j), s.Seq, "after resuming, record %d", j)
	}
	assert.Equal(t, total-1, seen[len(seen)-1].Seq, "read up to the newest record")
	assert.Equal(t, uint64(rep.FirstAfterResume)-first, st.Lost, "lost exactly the records between the pause and the oldest")
}

// TestRandomKillsNeverTear: round after round, two producer processes
// appending as fast as they can (one mixing Append, AppendFunc and
// AppendBatch, one with Append only) are SIGKILLed at random moments while
// reader processes read; the parent then appends a marker, and the readers
// read up to it. On a ring too large to be lapped and on one small enough to
// be lapped many times over, no reader ever delivers a record that fails its
// checksum; each accounts for every sequence number it moved past (received
// + lost + abandoned + corrupt) after every Read, at every marker and at the
// end; each delivers in strictly increasing order, each producer's records in
// that producer's order; and readers agree on the record at every sequence
// number both delivered. Every abandoned entry belongs to a killed
// producer's last append or to a late commit. On the ring that is never
// lapped no reader loses a record or finds a corrupt one, every reader counts
// exactly the entries the ring abandoned, and all deliver the same records.
func TestRandomKillsNeverTear(t *testing.T) {
	for _, c := range []struct {
		name string
		g    shm.Geometry
		laps bool
	}{
		{"never-lapped", shm.Geometry{IndexSlots: 1 << 18, DataBytes: 1 << 25}, false},
		{"lapped", shm.Geometry{IndexSlots: 1 << 12, DataBytes: 1 << 18}, true},
	} {
		t.Run(c.name, func(t *testing.T) { randomKills(t, c.g, c.laps) })
	}
}

func randomKills(t *testing.T, g shm.Geometry, laps bool) {
	const rounds, readers = 5, 2
	// The producers of a round, by the most entries each can leave claimed
	// when it is killed: a mixed producer's batch, or one Append.
	batches := []struct {
		arg      string
		inFlight uint64
	}{{"0", maxMixedBatch}, {"1", 1}}
	path, r := createRing(t, g)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))

	rs, outs := startReaders(t, readers, "path="+path, "start=0", "rounds="+strconv.Itoa(rounds), "wi=1", "wm=50")
	inFlight := uint64(0)
	markers := make([]uint64, rounds)
	for round := range rounds {
		var ps []*testproc.Proc
		for i, b := range batches {
			ps = append(ps, startProc(t, "producer", "path="+path, "id="+strconv.Itoa(round*len(batches)+i),
				"count=0", "mode=loop", "batch="+b.arg, "filler=200"))
		}
		for _, p := range ps {
			expectLine(t, p, "ready")
		}
		before := r.Counters().Next
		for _, p := range ps {
			require.NoError(t, p.Stdin.Close())
		}
		// Kill each after a random number of records has been claimed since
		// the start: wherever in an append it happens to be.
		for i, p := range ps {
			target := before + 100 + rng.Uint64N(4000)
			poll(t, func() bool { return r.Counters().Next >= target }, "appends reach seq %d", target)
			assert.True(t, p.Kill(), "the producer died of SIGKILL, not of an error of its own; stderr: %s", p.Stderr())
			inFlight += batches[i].inFlight
		}
		for {
			seq, err := r.Append(makeRecord(uint32(markerID+round), 0, 0))
			if errors.Is(err, ErrAbandoned) {
				continue // descheduled past WaitMax: append it again
			}
			require.NoError(t, err)
			markers[round] = seq
			break
		}
		for _, p := range rs {
			line := expectLine(t, p, fmt.Sprintf("round %d ", round))
			assert.Equal(t, markers[round], lineField(t, line, 2), "round %d's marker", round)
		}
	}

	cn := r.Counters()
	t.Logf("ring: %+v", cn)
	if laps {
		require.Greater(t, cn.DataTail, g.DataBytes, "the data ring was lapped")
	} else {
		require.LessOrEqual(t, cn.Next, uint64(g.IndexSlots), "the index was never lapped")
		require.LessOrEqual(t, cn.DataTail, g.DataBytes, "the data ring was never lapped")
	}
	byseq := map[uint64]seenRecord{}
	var streams [][]seenRecord
	for i, p := range rs {
		name := fmt.Sprintf("reader %d", i)
		rep := reportOf(t, p)
		st := rep.Stats
		t.Logf("%s: %+v, moved past %d", name, st, rep.End-rep.Start)
		assert.Zero(t, rep.Bad, "%s delivered records that fail their checksum: %v", name, rep.BadSeqs)
		assert.Equal(t, rep.End-rep.Start, statsSum(st), "%s accounts for every sequence number", name)
		require.Len(t, rep.Rounds, rounds, name)
		for k, rr := range rep.Rounds {
			assert.Equal(t, markers[k], rr.Marker, "%s round %d", name, k)
			assert.Equal(t, rr.Cursor-rep.Start, statsSum(rr.Stats), "%s round %d: accounted at the marker", name, k)
		}
		assert.Equal(t, markers[rounds-1]+1, rep.End, name)
		assert.Zero(t, rep.Mismatches, "%s: after some Reads Stats did not account for exactly the sequence numbers up to Cursor(): %v", name, rep.MismatchAt)
		if !laps {
			assert.Zero(t, st.Lost, "%s: nothing is lost on a ring that is never lapped", name)
			assert.Zero(t, st.Corrupt, "%s: nothing is corrupt on a ring that is never lapped", name)
		}
		if st.Lost == 0 && st.Corrupt == 0 {
			assert.Equal(t, cn.Abandoned, st.Abandoned, "%s lost nothing, so it saw every abandoned entry", name)
		}
		seen := loadSeen(t, outs[i])
		require.Equal(t, int(st.Received), len(seen), name)
		checkStream(t, name, seen)
		for _, s := range seen {
			if o, ok := byseq[s.Seq]; ok {
				require.Equal(t, o, s, "%s: seq %d holds another record than in an earlier reader", name, s.Seq)
			}
			byseq[s.Seq] = s
		}
		streams = append(streams, seen)
	}
	if !laps {
		for i := 1; i < len(streams); i++ {
			assert.True(t, slices.Equal(streams[0], streams[i]), "reader %d delivered other records than reader 0", i)
		}
	}
	// Every abandoned entry is a killed producer's (its last append) or a
	// live one's that was descheduled past WaitMax (its commit then fails).
	assert.LessOrEqual(t, cn.Abandoned, inFlight+cn.LateCommits, "abandoned entries")
}

// TestReaderRegistryAcrossProcesses: the registry slot of a reader process
// that was SIGKILLed (idle, or asleep in Wait or ReadContext) stays listed
// with its pid but not alive until Reclaim frees it (or a new reader that
// finds the registry full takes it); a reader killed asleep no longer counts
// as a waiter once its slot is reclaimed, and the ring goes on: the next
// append spends at most one spare wake-up on it and reaches a new reader.
func TestReaderRegistryAcrossProcesses(t *testing.T) {
	info := func(r *Ring, slot int) (ReaderInfo, bool) {
		for _, in := range r.Readers() {
			if in.Slot == slot {
				return in, true
			}
		}
		return ReaderInfo{}, false
	}

	t.Run("killed", func(t *testing.T) {
		path, r := createRing(t, shm.Geometry{IndexSlots: 64, DataBytes: 8192, ReaderSlots: 4})
		p := startProc(t, "registered", "path="+path, "mode=idle")
		slot := int(lineField(t, expectLine(t, p, "slot "), 1))
		in, ok := info(r, slot)
		require.True(t, ok, "slot %d is in Readers()", slot)
		assert.Equal(t, p.Pid(), in.PID)
		assert.True(t, in.Alive)
		assert.False(t, in.Waiting)

		require.True(t, p.Kill())
		in, ok = info(r, slot)
		require.True(t, ok, "a killed reader's slot stays until reclaimed")
		assert.Equal(t, p.Pid(), in.PID)
		assert.False(t, in.Alive, "a killed reader is not alive")
		assert.Equal(t, 1, r.Reclaim())
		_, ok = info(r, slot)
		assert.False(t, ok, "slot %d is free after Reclaim", slot)
		assert.Empty(t, r.Readers())
		assert.Zero(t, r.Reclaim(), "nothing left to reclaim")
	})

	for _, mode := range []string{"wait", "read"} {
		t.Run("killed-while-asleep-in-"+mode, func(t *testing.T) {
			path, r := createRing(t, shm.Geometry{IndexSlots: 64, DataBytes: 8192, ReaderSlots: 4})
			p := startProc(t, "registered", "path="+path, "mode="+mode)
			slot := int(lineField(t, expectLine(t, p, "slot "), 1))
			expectLine(t, p, "waiting")
			poll(t, func() bool { return r.Counters().Waiters == 1 }, "the reader sleeps on the futex")
			require.Len(t, r.Readers(), 1)
			in, ok := info(r, slot)
			require.True(t, ok)
			assert.Equal(t, p.Pid(), in.PID)
			assert.True(t, in.Waiting)
			assert.True(t, in.Alive)

			require.True(t, p.Kill())
			require.Len(t, r.Readers(), 1)
			in, ok = info(r, slot)
			require.True(t, ok, "a killed reader's slot stays until reclaimed")
			assert.Equal(t, p.Pid(), in.PID)
			assert.False(t, in.Alive, "a killed reader is not alive")
			assert.Equal(t, 1, r.Reclaim())
			assert.Empty(t, r.Readers(), "slot %d is free after Reclaim", slot)
			assert.Equal(t, uint32(0), r.Counters().Waiters, "no waiter left after Reclaim")

			// The ring goes on: an append (which may spend one spare wake-up
			// on the dead sleeper's flag, and clears it) reaches a new
			// reader, which may take the slot.
			rd, err := r.NewReader(ReaderOptions{})
			require.NoError(t, err)
			defer rd.Close()
			seq, err := r.Append(makeRecord(1, 0, 10))
			require.NoError(t, err)
			assert.Equal(t, uint32(0), r.ctl.sleeping.Load(), "the dead sleeper's flag is cleared")
			ctx, cancel := context.WithTimeout(context.Background(), procTimeout)
			defer cancel()
			rec, err := rd.ReadContext(ctx)
			require.NoError(t, err)
			assert.Equal(t, seq, rec.Seq)
			assert.Equal(t, uint32(0), r.Counters().Waiters)
		})
	}

	t.Run("full-registry-reuses-dead-slot", func(t *testing.T) {
		path, r := createRing(t, shm.Geometry{IndexSlots: 64, DataBytes: 8192, ReaderSlots: 1})
		p := startProc(t, "registered", "path="+path, "mode=idle")
		slot := int(lineField(t, expectLine(t, p, "slot "), 1))
		_, err := r.NewReader(ReaderOptions{})
		require.ErrorIs(t, err, ErrNoReaderSlot, "the only slot is held by a live reader")
		require.True(t, p.Kill())
		rd, err := r.NewReader(ReaderOptions{})
		require.NoError(t, err, "a new reader reclaims the dead reader's slot")
		defer rd.Close()
		assert.Equal(t, slot, rd.Slot())
		in, ok := info(r, slot)
		require.True(t, ok)
		assert.Equal(t, os.Getpid(), in.PID)
		assert.True(t, in.Alive)
	})
}

// TestReaderStatsMatchCursorAfterEveryRead: ReaderStats promises that every
// sequence number the reader has moved past is counted in exactly one
// counter, and Cursor() is the next sequence Read will consider, the one a
// restarted reader resumes at. So after every Read, Received + Lost +
// Abandoned + Corrupt must equal Cursor() - start. Here seqs 1 and 3 were
// claimed by producer processes that were killed and have been abandoned;
// a reader process from seq 0 reads 0, 2 and 4 and checks the identity after
// each Read. A reader that counted the skipped entries of a batch when it
// copied the batch [0, 2, 4], rather than as its cursor moves past them,
// would count both after returning seq 0 with Cursor() at 2, and a reader
// resumed at AtSeq(Cursor()) with those counters would count seq 3 twice.
func TestReaderStatsMatchCursorAfterEveryRead(t *testing.T) {
	path, r := createRing(t, shm.Geometry{IndexSlots: 64, DataBytes: 8192})
	appendOne := func(counter uint64) {
		t.Helper()
		_, err := r.Append(makeRecord(1, counter, 20))
		require.NoError(t, err)
	}
	appendOne(0)
	for i, want := range []uint64{1, 3} {
		stuck := startProc(t, "stuck", "path="+path, "point=claimed", "id=9")
		require.Equal(t, want, lineField(t, expectLine(t, stuck, "claimed "), 1))
		require.True(t, stuck.Kill())
		appendOne(uint64(i + 1))
	}
	// A first reader abandons the dead entries, so that the second one finds
	// the whole batch settled in one pass.
	first := startProc(t, "reader", "path="+path, "start=0", "want=3", "wi=1", "wm=20")
	require.Equal(t, ReaderStats{Received: 3, Abandoned: 2}, reportOf(t, first).Stats)

	second := startProc(t, "reader", "path="+path, "start=0", "want=3", "wi=1", "wm=20")
	rep := reportOf(t, second)
	require.Equal(t, ReaderStats{Received: 3, Abandoned: 2}, rep.Stats)
	assert.Zero(t, rep.Mismatches, "after some Read, Stats counted sequence numbers past Cursor(): %v", rep.MismatchAt)
}

// TestReaderAsleepOnEmptyRingAbandonsDeadClaim: a reader process blocked in
// ReadContext on an empty ring; then a producer process claims seq 0 and is
// killed before it commits. Wait promises that while the next entry is
// incomplete it returns within WaitInterval so that Read retries it and
// abandons it after WaitMax (20ms here); ReadContext that it blocks at most
// WaitMax on a dead producer. So the entry must be abandoned (globally
// counted) well before anything else is appended: the test allows 3 s, 150
// times WaitMax. A reader woken only by commits would learn of the claim only
// when a later record is committed, and until then a producer that was only
// paused could still commit, however late. Once a later record is committed
// the reader delivers it, with the dead entry counted abandoned once.
func TestReaderAsleepOnEmptyRingAbandonsDeadClaim(t *testing.T) {
	path, r := createRing(t, shm.Geometry{IndexSlots: 64, DataBytes: 8192})
	rs, _ := startReaders(t, 1, "path="+path, "start=0", "rounds=1", "wi=2", "wm=20")
	poll(t, func() bool { return r.Counters().Waiters == 1 }, "the reader sleeps on the empty ring")

	stuck := startProc(t, "stuck", "path="+path, "point=claimed", "id=9")
	require.Equal(t, uint64(0), lineField(t, expectLine(t, stuck, "claimed "), 1))
	require.True(t, stuck.Kill())
	abandoned := pollFor(3*time.Second, func() bool { return r.Counters().Abandoned == 1 })
	assert.True(t, abandoned, "the sleeping reader abandons the dead entry without waiting for another commit (Counters: %+v)", r.Counters())

	// A later record: the reader delivers it.
	seq, err := r.Append(makeRecord(markerID, 0, 0))
	require.NoError(t, err)
	assert.Equal(t, uint64(1), seq)
	rep := reportOf(t, rs[0])
	assert.Equal(t, ReaderStats{Received: 1, Abandoned: 1}, rep.Stats)
	assert.Equal(t, uint64(1), r.Counters().Abandoned)
}
