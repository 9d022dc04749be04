package events

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCodecRoundTrip(t *testing.T) {
	cases := []struct {
		source, name, unique string
		data                 []byte
		followUp             bool
	}{
		{"s", "n", "", nil, false},
		{"cache", "purge", "purge:users", []byte(`{"k":1}`), false},
		{"cache", "purge", "purge:users", nil, true},
		{string(bytes.Repeat([]byte("x"), MaxNameLen)), "n", "", []byte{0}, false},
	}
	for _, c := range cases {
		buf := make([]byte, encodedSize(c.source, c.name, c.unique, c.data))
		encode(buf, c.source, c.name, c.unique, c.data, 4242, -7, c.followUp)
		w, err := decode(buf)
		require.NoError(t, err)
		require.Equal(t, c.source, string(w.source))
		require.Equal(t, c.name, string(w.name))
		require.Equal(t, c.unique, string(w.unique))
		require.Equal(t, len(c.data), len(w.data))
		require.True(t, bytes.Equal(c.data, w.data))
		require.Equal(t, uint32(4242), w.pid)
		require.Equal(t, int64(-7), w.posted)
		require.Equal(t, c.followUp, w.followUp)
	}
}

func TestDecodeRejects(t *testing.T) {
	good := make([]byte, encodedSize("s", "n", "k", []byte("d")))
	encode(good, "s", "n", "k", []byte("d"), 1, 1, false)
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	bad := map[string][]byte{
		"empty":        nil,
		"short header": good[:headerSize-1],
		"version":      mutate(func(b []byte) []byte { b[0] = 9; return b }),
		"unknown flag": mutate(func(b []byte) []byte { b[1] |= 4; return b }),
		"follow-up w/o key": func() []byte {
			b := make([]byte, encodedSize("s", "n", "", nil))
			encode(b, "s", "n", "", nil, 1, 1, false)
			b[1] = flagFollowUp
			return b
		}(),
		"reserved":       mutate(func(b []byte) []byte { b[13] = 1; return b }),
		"empty source":   mutate(func(b []byte) []byte { b[2], b[3] = 0, 0; return b }),
		"empty name":     mutate(func(b []byte) []byte { b[4], b[5] = 0, 0; return b }),
		"flag w/o key":   mutate(func(b []byte) []byte { b[1] = 0; return b }),
		"lengths beyond": mutate(func(b []byte) []byte { b[2] = 200; return b }),
		"truncated":      good[:headerSize+2],
	}
	for name, rec := range bad {
		_, err := decode(rec)
		require.ErrorIs(t, err, ErrMalformed, name)
	}
}

// FuzzDecode feeds arbitrary records to the decoder: it must never panic,
// and whatever it accepts must re-encode to the same bytes.
func FuzzDecode(f *testing.F) {
	for _, c := range [][4]string{{"s", "n", "", ""}, {"cache", "purge", "k", "data"}, {"a", "b", "", "\x00\xff"}} {
		buf := make([]byte, encodedSize(c[0], c[1], c[2], []byte(c[3])))
		encode(buf, c[0], c[1], c[2], []byte(c[3]), 99, 12345, c[2] != "")
		f.Add(buf)
	}
	f.Fuzz(func(t *testing.T, rec []byte) {
		w, err := decode(rec)
		if err != nil {
			return
		}
		again := make([]byte, encodedSize(string(w.source), string(w.name), string(w.unique), w.data))
		encode(again, string(w.source), string(w.name), string(w.unique), w.data, int(w.pid), w.posted, w.followUp)
		if !bytes.Equal(again, rec) {
			t.Fatalf("decode/encode changed the record:\n%x\n%x", rec, again)
		}
	})
}
