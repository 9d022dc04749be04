package events_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/shmring/shmring/events"
)

// exampleDir stands in for /dev/shm in the examples.
func exampleDir() string {
	dir, err := os.MkdirTemp("", "shmring-example")
	if err != nil {
		log.Fatal(err)
	}
	return dir
}

func ExampleOpen() {
	dir := exampleDir()
	defer os.RemoveAll(dir)

	// Every worker of a prefork server opens the same file; the first one
	// creates it.
	bus, err := events.Open(events.Options{Path: filepath.Join(dir, "app.events")})
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Close()
	fmt.Println(bus.Options().Mode, bus.Options().Timeout)
	// Output: wake 2s
}

func ExampleBus_Register() {
	dir := exampleDir()
	defer os.RemoveAll(dir)
	// Manual mode runs handlers inside Post and Poll, which keeps the
	// example's output in order.
	bus, err := events.Open(events.Options{Path: filepath.Join(dir, "app.events"), Mode: events.Manual})
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Close()

	bus.Register(func(e *events.Event) {
		fmt.Printf("%s/%s: %s\n", e.Source, e.Name, e.Data)
	}, "balancer", "targets", "health")

	bus.Post("balancer", "targets", []byte("10.0.0.7:80 up"))
	bus.Post("cache", "purge", []byte("not for this handler"))
	bus.Post("balancer", "health", []byte("ok"))
	// Output:
	// balancer/targets: 10.0.0.7:80 up
	// balancer/health: ok
}

func ExampleBus_Post() {
	dir := exampleDir()
	defer os.RemoveAll(dir)
	bus, err := events.Open(events.Options{Path: filepath.Join(dir, "app.events"), Mode: events.Manual})
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Close()

	bus.Register(func(e *events.Event) {
		var p struct{ Key string }
		if err := e.JSON(&p); err != nil {
			log.Print(err)
			return
		}
		fmt.Println("purge", p.Key, "in pid", e.PID == os.Getpid())
		// A handler that posts gets Recursive: the running poll handles
		// the new event after this handler returns.
		res, _ := bus.Post("cache", "purged", nil)
		fmt.Println("post from a handler:", res)
	}, "cache", "purge")
	bus.Register(func(e *events.Event) { fmt.Println("purged") }, "cache", "purged")

	res, err := bus.PostJSON("cache", "purge", struct{ Key string }{"users"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("post:", res)
	// Output:
	// purge users in pid true
	// post from a handler: recursive
	// purged
	// post: done
}

func ExampleBus_PostUnique() {
	dir := exampleDir()
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "app.events")
	// Two buses on one file behave as two worker processes would.
	var workers []*events.Bus
	for i := range 2 {
		bus, err := events.Open(events.Options{Path: path, Mode: events.Manual})
		if err != nil {
			log.Fatal(err)
		}
		defer bus.Close()
		bus.Register(func(e *events.Event) {
			fmt.Printf("worker %d refreshes %s\n", i, e.Data)
		}, "cache", "refresh")
		workers = append(workers, bus)
	}
	// Both notice the same change and post it with the same key: it runs
	// once, in whichever polls it first.
	workers[0].PostUnique("cache", "refresh", []byte("users"), "refresh:users")
	workers[1].PostUnique("cache", "refresh", []byte("users"), "refresh:users")
	workers[1].Poll()
	workers[0].Poll()
	// Output: worker 0 refreshes users
}
