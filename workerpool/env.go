package workerpool

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// The master tells a worker what it is through its environment, and hands it
// files at fixed descriptors (exec.Cmd.ExtraFiles start at 3):
//
//	fd 3          read end of a pipe whose write end only the master holds:
//	              end of file means the master is gone
//	fd 4 .. 4+n-1 the listening sockets, in Config.Listen order
const (
	envWorker    = "SHMRING_WORKERPOOL_WORKER"    // "index:generation"
	envListeners = "SHMRING_WORKERPOOL_LISTENERS" // n
	envRing      = "SHMRING_WORKERPOOL_RING"      // the master's bus path
	envStart     = "SHMRING_WORKERPOOL_START"     // sequence to resume at, if any

	fdMaster    = 3
	fdListeners = 4
)

// IsWorker reports whether this process was started by a master as one of
// its workers, and so whether Run will call Config.Main.
func IsWorker() bool { return os.Getenv(envWorker) != "" }

// workerEnv is what a worker reads from its environment.
type workerEnv struct {
	index, gen int
	listeners  int
	ring       string
	start      uint64
	resume     bool
}

func readWorkerEnv() (workerEnv, error) {
	var w workerEnv
	idx, gen, ok := strings.Cut(os.Getenv(envWorker), ":")
	var err1, err2, err3 error
	w.index, err1 = strconv.Atoi(idx)
	w.gen, err2 = strconv.Atoi(gen)
	w.listeners, err3 = strconv.Atoi(os.Getenv(envListeners))
	w.ring = os.Getenv(envRing)
	if !ok || err1 != nil || err2 != nil || err3 != nil || w.index < 0 || w.listeners < 0 || w.ring == "" {
		return w, fmt.Errorf("workerpool: worker environment is malformed (%s=%q %s=%q %s=%q)",
			envWorker, os.Getenv(envWorker), envListeners, os.Getenv(envListeners), envRing, w.ring)
	}
	if s := os.Getenv(envStart); s != "" {
		seq, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return w, fmt.Errorf("workerpool: worker environment: %s=%q: %w", envStart, s, err)
		}
		w.start, w.resume = seq, true
	}
	// A worker's own children (its Main may run commands) are not workers.
	for _, k := range []string{envWorker, envListeners, envRing, envStart} {
		os.Unsetenv(k)
	}
	return w, nil
}

// childEnv is the master's environment without any pool variables it may
// have inherited, plus those of one worker.
func childEnv(index, gen, listeners int, ring string, start *uint64) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SHMRING_WORKERPOOL_") {
			env = append(env, kv)
		}
	}
	env = append(env,
		fmt.Sprintf("%s=%d:%d", envWorker, index, gen),
		fmt.Sprintf("%s=%d", envListeners, listeners),
		envRing+"="+ring)
	if start != nil {
		env = append(env, fmt.Sprintf("%s=%d", envStart, *start))
	}
	return env
}
