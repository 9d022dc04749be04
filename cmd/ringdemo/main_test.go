package main

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDemoAgrees builds the demo and runs it as a user would.
func TestDemoAgrees(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "ringdemo")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "%s", out)
	ring := filepath.Join(t.TempDir(), "demo.ring")
	out, err = exec.Command(bin, "-workers", "3", "-records", "40", "-path", ring).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "all 3 workers saw the same 120 records in the same order")

	// A second run on the same file starts after the first run's records.
	out, err = exec.Command(bin, "-workers", "2", "-records", "3", "-path", ring).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), "next sequence 120")
	assert.Contains(t, string(out), "all 2 workers saw the same 6 records in the same order")
}
