// Package bench holds shmring's benchmark harness: cross-process latency and
// throughput scenarios, and the baselines they are compared with in the same
// run.
package bench
