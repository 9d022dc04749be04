package events

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Wire format of one event, the payload of one ring record. Integers are
// little-endian.
//
//	off   size  field
//	0     1     format version (eventVersion)
//	1     1     flags: bit 0 = the event carries a unique key; bit 1 = it is
//	            a follow-up of its key's winner, which no process runs (only
//	            with bit 0); others zero
//	2     2     source length S (1..MaxNameLen)
//	4     2     name length N (1..MaxNameLen)
//	6     2     unique-key length U (0 without a key, else 1..MaxNameLen)
//	8     4     pid of the poster
//	12    4     reserved, zero
//	16    8     posted at, unix nanoseconds
//	24    S     source
//	24+S  N     name
//	..    U     unique key
//	..    rest  data (opaque bytes)
//
// Events posted with PostLocal never take this form: they stay in the
// process.
const (
	eventVersion = 1
	headerSize   = 24

	flagUnique   = 1 << 0
	flagFollowUp = 1 << 1

	// MaxNameLen is the longest source, name or unique key, in bytes.
	MaxNameLen = 1<<16 - 1
)

// ErrMalformed marks a ring record that is not a valid event. Only other
// writers of the same ring (a foreign program, a damaged file) produce one;
// a bus skips it and counts it in Stats.Malformed.
var ErrMalformed = errors.New("events: malformed event record")

// encodedSize returns the record size of an event.
func encodedSize(source, name, unique string, data []byte) int {
	return headerSize + len(source) + len(name) + len(unique) + len(data)
}

// encode writes the event into dst, which has exactly encodedSize bytes.
// followUp marks a unique event as a follow-up of its key's winner.
func encode(dst []byte, source, name, unique string, data []byte, pid int, posted int64, followUp bool) {
	_ = dst[headerSize-1] // one bounds check for the header
	dst[0] = eventVersion
	dst[1] = 0
	if unique != "" {
		dst[1] = flagUnique
		if followUp {
			dst[1] |= flagFollowUp
		}
	}
	binary.LittleEndian.PutUint16(dst[2:], uint16(len(source)))
	binary.LittleEndian.PutUint16(dst[4:], uint16(len(name)))
	binary.LittleEndian.PutUint16(dst[6:], uint16(len(unique)))
	binary.LittleEndian.PutUint32(dst[8:], uint32(pid))
	binary.LittleEndian.PutUint32(dst[12:], 0)
	binary.LittleEndian.PutUint64(dst[16:], uint64(posted))
	n := headerSize
	n += copy(dst[n:], source)
	n += copy(dst[n:], name)
	n += copy(dst[n:], unique)
	copy(dst[n:], data)
}

// wireEvent is a decoded record whose byte fields alias the record.
type wireEvent struct {
	source, name, unique, data []byte
	pid                        uint32
	posted                     int64
	followUp                   bool
}

// decode parses a record. It never panics, whatever rec holds.
func decode(rec []byte) (wireEvent, error) {
	var w wireEvent
	err := decodeInto(&w, rec)
	return w, err
}

// decodeInto is decode into *w, which the poll reuses: no copy of the
// result. w is left partly filled on an error.
func decodeInto(w *wireEvent, rec []byte) error {
	if len(rec) < headerSize {
		return fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", ErrMalformed, len(rec), headerSize)
	}
	if rec[0] != eventVersion {
		return fmt.Errorf("%w: format version %d, want %d", ErrMalformed, rec[0], eventVersion)
	}
	flags := rec[1]
	if flags&^(flagUnique|flagFollowUp) != 0 || binary.LittleEndian.Uint32(rec[12:]) != 0 {
		return fmt.Errorf("%w: unknown flags or reserved bits set", ErrMalformed)
	}
	s := int(binary.LittleEndian.Uint16(rec[2:]))
	n := int(binary.LittleEndian.Uint16(rec[4:]))
	u := int(binary.LittleEndian.Uint16(rec[6:]))
	if s == 0 || n == 0 || (u != 0) != (flags&flagUnique != 0) || (flags&flagFollowUp != 0 && u == 0) {
		return fmt.Errorf("%w: empty source or name, or unique flags and key disagree", ErrMalformed)
	}
	w.followUp = flags&flagFollowUp != 0
	if headerSize+s+n+u > len(rec) {
		return fmt.Errorf("%w: field lengths %d+%d+%d exceed the %d-byte record", ErrMalformed, s, n, u, len(rec))
	}
	w.pid = binary.LittleEndian.Uint32(rec[8:])
	w.posted = int64(binary.LittleEndian.Uint64(rec[16:]))
	off := headerSize
	w.source = rec[off : off+s : off+s]
	off += s
	w.name = rec[off : off+n : off+n]
	off += n
	w.unique = rec[off : off+u : off+u]
	off += u
	w.data = rec[off:len(rec):len(rec)]
	return nil
}

// interner turns the few distinct source and name strings a bus sees into
// shared strings without allocating per event. It is used only under the
// poll lock.
type interner struct {
	m map[string]string
	// recent holds the last string seen in each of a few slots, picked by
	// a cheap hash of the bytes: a stream of events repeats a handful of
	// sources and names, and a comparison costs less than a map lookup.
	recent [16]string
}

func recentSlot(b []byte) int {
	if len(b) == 0 {
		return 0
	}
	return int(uint(len(b))*31+uint(b[0])*7+uint(b[len(b)-1])) & 15
}

// maxInterned bounds the interner: a ring fed many distinct names (from a
// buggy or hostile poster) must not grow this process's memory without end.
const maxInterned = 4096

func (in *interner) get(b []byte) string {
	slot := recentSlot(b)
	if s := in.recent[slot]; s == string(b) { // no allocation for a comparison
		return s
	}
	if s, ok := in.m[string(b)]; ok { // nor for a lookup
		in.recent[slot] = s
		return s
	}
	s := string(b)
	in.recent[slot] = s
	if in.m == nil {
		in.m = make(map[string]string)
	}
	if len(in.m) < maxInterned {
		in.m[s] = s
	}
	return s
}

// Decode parses a ring record holding an event, for tools that read the
// ring directly. The event it returns owns its bytes. A record that is not
// an event gives an error.
func Decode(seq uint64, rec []byte) (*Event, error) {
	w, err := decode(rec)
	if err != nil {
		return nil, err
	}
	return &Event{
		Source:   string(w.source),
		Name:     string(w.name),
		Data:     append([]byte(nil), w.data...),
		Unique:   string(w.unique),
		FollowUp: w.followUp,
		PID:      int(w.pid),
		Seq:      seq,
		Posted:   time.Unix(0, w.posted),
	}, nil
}
