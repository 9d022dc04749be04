package shm_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/shmring/shmring/shm"
)

func ExampleOpenOrCreate() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "app.ring")

	region, err := shm.OpenOrCreate(path, shm.Options{Geometry: shm.Geometry{IndexSlots: 1024, DataBytes: 1 << 20}})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer region.Close()
	g := region.Geometry()
	fmt.Println(g.IndexSlots, g.DataBytes, g.MaxRecord)

	// A file that is not a ring is refused with an error that names it.
	junk := filepath.Join(dir, "junk")
	os.WriteFile(junk, []byte("hello, world"), 0o600)
	_, err = shm.Open(junk, shm.Options{})
	fmt.Println(errors.Is(err, shm.ErrNotRing))
	// Output:
	// 1024 1048576 262144
	// true
}
