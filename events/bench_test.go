package events

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/shmring/shmring/internal/clock"
	"github.com/shmring/shmring/ring"
)

// benchPath puts benchmark rings in /dev/shm (RAM, as in production) when it
// exists, so that page-cache writeback does not skew them.
func benchPath(b *testing.B) string {
	dir, err := os.MkdirTemp("/dev/shm", "shmring-events")
	if err != nil {
		return filepath.Join(b.TempDir(), "bus")
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "bus")
}

// BenchmarkPublish is the cost of appending one event with 64 data bytes
// (source "metrics", name "tick": a 101-byte record), with its floor beside
// it: the ring's own Append of a record of the same size, and the clock
// read that stamps the event.
func BenchmarkPublish(b *testing.B) {
	data := make([]byte, 64)
	b.Run("clock", func(b *testing.B) {
		var sink int64
		for b.Loop() {
			sink += clock.WallNano()
		}
		_ = sink
	})
	b.Run("publish-64B", func(b *testing.B) {
		bus, err := Open(Options{Path: benchPath(b), Mode: Manual})
		if err != nil {
			b.Fatal(err)
		}
		defer bus.Close()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := bus.Publish("metrics", "tick", data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("ring-append-101B", func(b *testing.B) {
		r, err := ring.Open(benchPath(b), ring.Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer r.Close()
		rec := make([]byte, encodedSize("metrics", "tick", "", data))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := r.Append(rec); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkPost is a Post of 64 data bytes in Manual mode with one handler:
// append, then a poll that reads the event back and runs the handler.
func BenchmarkPost(b *testing.B) {
	bus, err := Open(Options{Path: benchPath(b), Mode: Manual})
	if err != nil {
		b.Fatal(err)
	}
	defer bus.Close()
	n := 0
	bus.Register(func(*Event) { n++ }, "metrics")
	data := make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := bus.Post("metrics", "tick", data); err != nil {
			b.Fatal(err)
		}
	}
	if n < b.N {
		b.Fatalf("handled %d of %d", n, b.N)
	}
}

// BenchmarkPollDrain is a reader's cost per event: a poll that reads,
// decodes and dispatches events of 64 data bytes to one handler, published
// beforehand by another bus on the same ring (not timed), 1024 at a time.
func BenchmarkPollDrain(b *testing.B) {
	path := benchPath(b)
	reader, err := Open(Options{Path: path, Mode: Manual, Slots: 1 << 16, Size: 16 << 20})
	if err != nil {
		b.Fatal(err)
	}
	defer reader.Close()
	writer, err := Open(Options{Path: path, Mode: Manual, Observe: true})
	if err != nil {
		b.Fatal(err)
	}
	defer writer.Close()
	n := 0
	reader.Register(func(*Event) { n++ }, "metrics")
	data := make([]byte, 64)
	const batch = 1024
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; done += batch {
		b.StopTimer()
		for range batch {
			if _, err := writer.Publish("metrics", "tick", data); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		if _, err := reader.Poll(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if n < b.N {
		b.Fatalf("handled %d of %d", n, b.N)
	}
	if st := reader.Stats(); st.Lost != 0 {
		b.Fatalf("lost %d", st.Lost)
	}
}
