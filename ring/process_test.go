package ring

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shmring/shmring/internal/testproc"
	"github.com/shmring/shmring/shm"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Multi-process tests: the test binary re-executes itself in the roles
// below, and the parent compares what each process saw.

func TestHelperProcess(t *testing.T) {
	testproc.Serve(map[string]testproc.Role{
		"producer":      roleProducer,
		"reader":        roleReader,
		"stuckProducer": roleStuckProducer,
	})
}

// A test record: producer id, per-producer counter, filler of a length that
// depends on both, and a SHA-256 prefix of all that, so a reader can verify
// every record independently of the ring's own checksum.
func makeRecord(id, counter int) []byte {
	n := 16 + (id*131+counter*17)%200
	p := make([]byte, n+8)
	binary.LittleEndian.PutUint32(p[0:], uint32(id))
	binary.LittleEndian.PutUint64(p[4:], uint64(counter))
	for i := 12; i < n; i++ {
		p[i] = byte(id + counter + i)
	}
	sum := sha256.Sum256(p[:n])
	copy(p[n:], sum[:8])
	return p
}

func checkRecord(p []byte) (id, counter int, ok bool) {
	if len(p) < 20 {
		return 0, 0, false
	}
	n := len(p) - 8
	sum := sha256.Sum256(p[:n])
	if !bytes.Equal(sum[:8], p[n:]) {
		return 0, 0, false
	}
	return int(binary.LittleEndian.Uint32(p)), int(binary.LittleEndian.Uint64(p[4:])), true
}

// roleProducer: path id count batch. Waits for the stdin barrier, then
// appends count records, batch at a time (1: Append).
func roleProducer(args []string) error {
	r, err := Open(args[0], Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	id, _ := strconv.Atoi(args[1])
	count, _ := strconv.Atoi(args[2])
	batch, _ := strconv.Atoi(args[3])
	fmt.Println("ready")
	testproc.WaitStdinClosed()
	for c := 0; c < count; {
		k := min(batch, count-c)
		if k == 1 {
			_, err = r.Append(makeRecord(id, c))
		} else {
			recs := make([][]byte, k)
			for i := range recs {
				recs[i] = makeRecord(id, c+i)
			}
			_, err = r.AppendBatch(recs)
		}
		if err != nil {
			return err
		}
		c += k
	}
	fmt.Println("done")
	return nil
}

// stopProducer is the producer id whose record ends a reader's run.
const stopProducer = 77

// readerReport is what a reader process prints when it finishes.
type readerReport struct {
	Stats  ReaderStats
	Start  uint64
	End    uint64
	Seqs   []uint64 // sequence numbers delivered, in order
	Tags   []string // "id/counter" of each, in order
	Bad    int      // records that failed the test's own checks
	Digest string
}

// roleReader: path startSeq want pauseAfter waitMaxMs. Reads from startSeq
// until its cursor reaches want (or, with want 0, until the ring is empty
// after the parent closes stdin). After pauseAfter records it prints
// "paused" and blocks on the stdin barrier.
func roleReader(args []string) error {
	r, err := Open(args[0], Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	start, _ := strconv.ParseUint(args[1], 10, 64)
	want, _ := strconv.ParseUint(args[2], 10, 64)
	pauseAfter, _ := strconv.Atoi(args[3])
	waitMax, _ := strconv.Atoi(args[4])
	rd, err := r.NewReader(ReaderOptions{Start: AtSeq(start), WaitInterval: time.Millisecond, WaitMax: time.Duration(waitMax) * time.Millisecond})
	if err != nil {
		return err
	}
	defer rd.Close()
	fmt.Println("ready")
	rep := readerReport{Start: start}
	h := sha256.New()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for rd.Cursor() < want || (want == 0 && pauseAfter >= 0) {
		if pauseAfter >= 0 && len(rep.Seqs) == pauseAfter {
			fmt.Println("paused")
			testproc.WaitStdinClosed()
			pauseAfter = -1
			if want == 0 {
				want = r.Counters().Next
			}
			continue
		}
		rec, err := rd.ReadContext(ctx)
		if err != nil {
			return fmt.Errorf("at cursor %d: %w", rd.Cursor(), err)
		}
		id, counter, ok := checkRecord(rec.Data)
		if !ok {
			rep.Bad++
			continue
		}
		rep.Seqs = append(rep.Seqs, rec.Seq)
		rep.Tags = append(rep.Tags, fmt.Sprintf("%d/%d", id, counter))
		binary.Write(h, binary.LittleEndian, rec.Seq)
		h.Write(rec.Data)
		if id == stopProducer {
			break
		}
	}
	rep.Stats, rep.End = rd.Stats(), rd.Cursor()
	rep.Digest = fmt.Sprintf("%x", h.Sum(nil))
	b, _ := json.Marshal(rep)
	fmt.Println("report " + string(b))
	return nil
}

// roleStuckProducer: path point. Appends one record but stops inside the
// append at the named hook point, says so, and waits to be killed.
func roleStuckProducer(args []string) error {
	r, err := Open(args[0], Options{})
	if err != nil {
		return err
	}
	point := HookBusy
	if args[1] == "claimed" {
		point = HookClaimed
	}
	SetHook(r, func(p HookPoint, seq uint64) {
		if p == point {
			fmt.Printf("stuck %d\n", seq)
			select {} // until SIGKILL
		}
	})
	_, err = r.Append(makeRecord(99, 0))
	return fmt.Errorf("append returned (%v); it should have stopped in the hook", err)
}

func parseReport(t *testing.T, p *testproc.Proc) readerReport {
	t.Helper()
	line, err := p.Expect("report ", 2*time.Minute)
	require.NoError(t, err)
	var rep readerReport
	require.NoError(t, json.Unmarshal([]byte(strings.TrimPrefix(line, "report ")), &rep))
	require.NoError(t, p.Wait(time.Minute))
	return rep
}

func createRing(t *testing.T, g shm.Geometry) (string, *Ring) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ring")
	r, err := Open(path, Options{Geometry: g})
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })
	return path, r
}

func startReady(t *testing.T, role string, args ...string) *testproc.Proc {
	t.Helper()
	p := testproc.Start(t, role, args...)
	_, err := p.Expect("ready", time.Minute)
	require.NoError(t, err)
	return p
}

// TestProcessesSeeOneOrder: 4 producer processes x 20,000 records, 3 reader
// processes. Every reader sees every record once, in the same order, intact.
func TestProcessesSeeOneOrder(t *testing.T) {
	const producers, each, readers = 4, 20000, 3
	path, _ := createRing(t, shm.Geometry{IndexSlots: 1 << 17, DataBytes: 1 << 25})
	total := strconv.Itoa(producers * each)
	var rs []*testproc.Proc
	for range readers {
		rs = append(rs, startReady(t, "reader", path, "0", total, "-1", "500"))
	}
	var ps []*testproc.Proc
	for i := range producers {
		batch := []string{"1", "7", "64", "1"}[i]
		ps = append(ps, startReady(t, "producer", path, strconv.Itoa(i), strconv.Itoa(each), batch))
	}
	for _, p := range ps {
		p.Stdin.Close()
	}
	for _, p := range ps {
		require.NoError(t, p.Wait(2*time.Minute))
	}
	var reports []readerReport
	for _, p := range rs {
		reports = append(reports, parseReport(t, p))
	}
	for i, rep := range reports {
		assert.Equal(t, ReaderStats{Received: producers * each}, rep.Stats, "reader %d", i)
		assert.Zero(t, rep.Bad, "reader %d: records failing their own checksum", i)
		require.Len(t, rep.Seqs, producers*each, "reader %d", i)
		for j, seq := range rep.Seqs {
			if uint64(j) != seq {
				t.Fatalf("reader %d: record %d has seq %d", i, j, seq)
			}
		}
		// Each producer's records arrive complete and in its own order.
		next := make([]int, producers)
		for _, tag := range rep.Tags {
			var id, counter int
			fmt.Sscanf(tag, "%d/%d", &id, &counter)
			require.Equal(t, next[id], counter, "reader %d: producer %d out of order", i, id)
			next[id]++
		}
		assert.Equal(t, reports[0].Digest, rep.Digest, "reader %d saw another order than reader 0", i)
		assert.Equal(t, reports[0].Tags, rep.Tags)
	}
}

// TestKilledProducerIsSkippedByEveryone: a producer is SIGKILLed between
// claim and commit. Every reader process waits WaitMax, skips that entry,
// counts it as abandoned, and goes on; the ring counts the abandon once.
func TestKilledProducerIsSkippedByEveryone(t *testing.T) {
	for _, point := range []string{"busy", "claimed"} {
		t.Run(point, func(t *testing.T) {
			path, r := createRing(t, shm.Geometry{IndexSlots: 1024, DataBytes: 1 << 18})
			const after = 500
			var rs []*testproc.Proc
			for range 3 {
				rs = append(rs, startReady(t, "reader", path, "0", strconv.Itoa(1+after), "-1", "100"))
			}
			stuck := testproc.Start(t, "stuckProducer", path, point)
			line, err := stuck.Expect("stuck ", time.Minute)
			require.NoError(t, err)
			assert.Equal(t, "stuck 0", line)
			assert.True(t, stuck.Kill(), "the producer died of SIGKILL")

			p := startReady(t, "producer", path, "1", strconv.Itoa(after), "1")
			p.Stdin.Close()
			require.NoError(t, p.Wait(time.Minute))
			for i, rp := range rs {
				rep := parseReport(t, rp)
				assert.Equal(t, ReaderStats{Received: after, Abandoned: 1}, rep.Stats, "reader %d", i)
				require.Len(t, rep.Seqs, after)
				assert.Equal(t, uint64(1), rep.Seqs[0], "reader %d: seq 0 skipped, then everything", i)
				assert.Equal(t, uint64(after), rep.Seqs[after-1])
			}
			assert.Equal(t, uint64(1), r.Counters().Abandoned, "abandoned once, globally")
		})
	}
}

// TestSlowReaderCountsExactLoss: a reader process stops while the ring is
// lapped several times over; when it resumes it has lost exactly what it
// did not see.
func TestSlowReaderCountsExactLoss(t *testing.T) {
	path, r := createRing(t, shm.Geometry{IndexSlots: 64, DataBytes: 8192, MaxRecord: 4096})
	rd := startReady(t, "reader", path, "0", "0", "10", "500")
	p := startReady(t, "producer", path, "0", "10", "1")
	p.Stdin.Close()
	require.NoError(t, p.Wait(time.Minute))
	_, err := rd.Expect("paused", time.Minute)
	require.NoError(t, err)

	// Records of varying size (16..215 bytes) lap both the index (64) and
	// the data ring (8 KiB) many times.
	p = startReady(t, "producer", path, "1", "3000", "1")
	p.Stdin.Close()
	require.NoError(t, p.Wait(time.Minute))
	oldest := r.Oldest()
	rd.Stdin.Close()
	rep := parseReport(t, rd)

	const total = 3010
	assert.Equal(t, uint64(total), rep.End)
	assert.Equal(t, uint64(total), rep.Stats.Received+rep.Stats.Lost, "every record received or counted lost")
	assert.Zero(t, rep.Stats.Abandoned+rep.Stats.Corrupt)
	assert.Greater(t, rep.Stats.Lost, uint64(2900))
	assert.Zero(t, rep.Bad, "no torn record delivered")
	require.Greater(t, len(rep.Seqs), 10)
	for j := 1; j < len(rep.Seqs); j++ {
		require.Greater(t, rep.Seqs[j], rep.Seqs[j-1], "delivered in increasing order")
	}
	assert.GreaterOrEqual(t, rep.Seqs[10], oldest, "after resuming it continues at a record still in the ring")
	assert.Equal(t, uint64(total-1), rep.Seqs[len(rep.Seqs)-1])
}

// TestKilledReaderSlotIsReclaimed: a reader process killed while asleep
// leaves a dead slot, which Readers shows and Reclaim frees.
func TestKilledReaderSlotIsReclaimed(t *testing.T) {
	path, r := createRing(t, shm.Geometry{IndexSlots: 64, DataBytes: 8192})
	rd := startReady(t, "reader", path, "0", "1000", "-1", "500")
	require.Eventually(t, func() bool { return r.Counters().Waiters == 1 }, time.Minute, time.Millisecond, "the reader goes to sleep on the futex")
	infos := r.Readers()
	require.Len(t, infos, 1)
	assert.Equal(t, rd.Pid(), infos[0].PID)
	assert.True(t, infos[0].Alive)
	assert.True(t, infos[0].Waiting)

	require.True(t, rd.Kill())
	infos = r.Readers()
	require.Len(t, infos, 1)
	assert.False(t, infos[0].Alive, "a killed reader is marked dead")
	assert.Equal(t, 1, r.Reclaim())
	assert.Empty(t, r.Readers())
	assert.Equal(t, uint32(0), r.Counters().Waiters)

	// The flag the dead sleeper left costs one spare wake-up and nothing else.
	_, err := r.Append(makeRecord(0, 0))
	require.NoError(t, err)
	assert.Equal(t, uint32(0), r.ctl.sleeping.Load())
}

// TestRandomKillsNeverTear: producer processes appending as fast as they can
// are SIGKILLed at arbitrary points, round after round, while reader
// processes read. No reader ever delivers a torn record, every reader sees
// the same records in the same order, and each accounts for every sequence
// number it moved past.
func TestRandomKillsNeverTear(t *testing.T) {
	path, r := createRing(t, shm.Geometry{IndexSlots: 1 << 16, DataBytes: 1 << 23})
	var rs []*testproc.Proc
	for range 2 {
		rs = append(rs, startReady(t, "reader", path, "0", strconv.Itoa(1<<62), "-1", "50"))
	}
	for round := range 6 {
		var ps []*testproc.Proc
		for i := range 2 {
			ps = append(ps, startReady(t, "producer", path, strconv.Itoa(round*2+i), "100000000", "1"))
		}
		before := r.Counters().Next
		for _, p := range ps {
			p.Stdin.Close()
		}
		// Kill them once they have appended a few thousand records between
		// them: wherever in an append each happens to be.
		require.Eventually(t, func() bool { return r.Counters().Next > before+uint64(2000+round*1500) }, time.Minute, 100*time.Microsecond)
		for _, p := range ps {
			p.Kill()
		}
	}
	stop := startReady(t, "producer", path, strconv.Itoa(stopProducer), "1", "1")
	stop.Stdin.Close()
	require.NoError(t, stop.Wait(time.Minute))

	var reports []readerReport
	for _, p := range rs {
		reports = append(reports, parseReport(t, p))
	}
	for i, rep := range reports {
		st := rep.Stats
		assert.Zero(t, rep.Bad, "reader %d delivered a torn record", i)
		assert.Zero(t, st.Corrupt, "reader %d", i)
		assert.Equal(t, rep.End-rep.Start, st.Received+st.Lost+st.Abandoned+st.Corrupt, "reader %d accounts for every sequence number", i)
		assert.Equal(t, "77/0", rep.Tags[len(rep.Tags)-1])
		for j := 1; j < len(rep.Seqs); j++ {
			require.Greater(t, rep.Seqs[j], rep.Seqs[j-1])
		}
		t.Logf("reader %d: %+v, moved past %d", i, st, rep.End-rep.Start)
	}
	// Abandoned entries are abandoned for everyone; losses may differ
	// between readers (one may be lapped where the other is not), so the
	// same records are compared where neither lost any.
	if reports[0].Stats.Lost == 0 && reports[1].Stats.Lost == 0 {
		assert.Equal(t, reports[0].Digest, reports[1].Digest)
		assert.Equal(t, reports[0].Stats.Abandoned, reports[1].Stats.Abandoned)
	}
	assert.LessOrEqual(t, r.Counters().Abandoned, uint64(12), "at most one abandoned entry per killed producer")
}
