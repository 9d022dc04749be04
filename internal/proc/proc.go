// Package proc identifies processes robustly: a pid together with the
// process's start time, so that a pid reused by a new process is not taken
// for the old one.
package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
)

// StartTime returns the start time of process pid, in clock ticks since boot
// (field 22 of /proc/PID/stat).
func StartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	_, start, err := parseStat(b)
	return start, err
}

// parseStat extracts the state (field 3) and start time (field 22) from the
// contents of /proc/PID/stat. The command name (field 2) is in parentheses
// and may itself contain spaces and parentheses, so fields are counted from
// the last ')'.
func parseStat(stat []byte) (state byte, start uint64, err error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, 0, errors.New("proc: malformed stat: no ')'")
	}
	fields := bytes.Fields(stat[i+1:])
	// fields[0] is field 3 (state); field 22 is fields[19].
	if len(fields) < 20 || len(fields[0]) != 1 {
		return 0, 0, fmt.Errorf("proc: malformed stat: %d fields after comm", len(fields))
	}
	start, err = strconv.ParseUint(string(fields[19]), 10, 64)
	return fields[0][0], start, err
}

var self struct {
	once  sync.Once
	start uint64
}

// SelfStartTime returns this process's start time in clock ticks since boot,
// or 0 if /proc is unavailable.
func SelfStartTime() uint64 {
	self.once.Do(func() { self.start, _ = StartTime(os.Getpid()) })
	return self.start
}

// Alive reports whether process pid exists and, when start is not zero,
// started at start (compared on its low 32 bits, which is what shared tables
// store). Without /proc it falls back to kill(pid, 0).
func Alive(pid int, start uint32) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err == nil {
		state, st, perr := parseStat(b)
		if perr != nil {
			return true // unreadable but present: do not declare it dead
		}
		// A zombie ('Z') or dead ('X') process has exited; its pid is only
		// waiting to be reaped.
		return state != 'Z' && state != 'X' && (start == 0 || uint32(st) == start)
	}
	if errors.Is(err, os.ErrNotExist) {
		return false
	}
	// /proc unreadable: kill(pid, 0) tells existence (EPERM means it exists).
	err = syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

var selfNS struct {
	once sync.Once
	ino  uint32
}

// PIDNamespace returns the inode number of this process's PID namespace
// (/proc/self/ns/pid), which names the namespace while it exists, or 0 if it
// cannot be read or does not fit 32 bits. Process ids, and so every Owner,
// mean something only inside one PID namespace.
func PIDNamespace() uint32 {
	selfNS.once.Do(func() {
		var st syscall.Stat_t
		if err := syscall.Stat("/proc/self/ns/pid", &st); err == nil && st.Ino <= 1<<32-1 {
			selfNS.ino = uint32(st.Ino)
		}
	})
	return selfNS.ino
}

// An Owner is a process identity packed into one 64-bit word for shared
// tables: pid<<32 | the low 32 bits of its start time. 0 means "nobody".
type Owner uint64

// OwnerOf packs pid and start time into an Owner.
func OwnerOf(pid int, start uint64) Owner {
	return Owner(uint64(uint32(pid))<<32 | uint64(uint32(start)))
}

// Self returns this process's Owner.
func Self() Owner { return OwnerOf(os.Getpid(), SelfStartTime()) }

// PID returns the owner's process id.
func (o Owner) PID() int { return int(uint64(o) >> 32) }

// Start returns the low 32 bits of the owner's start time.
func (o Owner) Start() uint32 { return uint32(o) }

// Alive reports whether the owner process still runs (see Alive).
func (o Owner) Alive() bool { return Alive(o.PID(), o.Start()) }

// Stopped reports whether every thread of process pid is stopped by a
// signal ('T' in /proc/PID/task/TID/stat). SIGSTOP takes effect
// asynchronously: until Stopped, some threads may still run.
func Stopped(pid int) (bool, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return false, err
	}
	for _, task := range tasks {
		b, err := os.ReadFile(dir + "/" + task.Name() + "/stat")
		if errors.Is(err, os.ErrNotExist) {
			continue // the thread exited meanwhile
		}
		if err != nil {
			return false, err
		}
		state, _, err := parseStat(b)
		if err != nil {
			return false, err
		}
		if state != 'T' {
			return false, nil
		}
	}
	return len(tasks) > 0, nil
}
