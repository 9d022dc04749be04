package ring

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/shmring/shmring/shm"
	"github.com/stretchr/testify/require"
)

func TestSmoke(t *testing.T) {
	r, err := Open(filepath.Join(t.TempDir(), "r"), Options{Geometry: shm.Geometry{IndexSlots: 16, DataBytes: 4096}})
	require.NoError(t, err)
	defer r.Close()
	rd, err := r.NewReader(ReaderOptions{})
	require.NoError(t, err)
	for i := 0; i < 100; i++ {
		seq, err := r.Append([]byte(fmt.Sprintf("rec-%03d-%s", i, string(make([]byte, i%50)))))
		require.NoError(t, err)
		require.Equal(t, uint64(i), seq)
		rec, err := rd.Read()
		require.NoError(t, err)
		require.Equal(t, uint64(i), rec.Seq)
		require.Equal(t, fmt.Sprintf("rec-%03d", i), string(rec.Data[:7]))
	}
	_, err = rd.Read()
	require.ErrorIs(t, err, ErrEmpty)
	t.Log(rd.Stats(), r.Counters(), r.Readers())
}

func BenchmarkSmokeAppend(b *testing.B) {
	r, err := Open(filepath.Join(b.TempDir(), "r"), Options{})
	require.NoError(b, err)
	defer r.Close()
	p := make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		r.Append(p)
	}
}
