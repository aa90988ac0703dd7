// Package freeport finds free TCP ports of the loopback address for tests, the demo and the
// benchmarks: the one copy of that helper.
package freeport

import (
	"fmt"
	"net"
	"testing"
)

// Get returns a TCP port of 127.0.0.1 that was free a moment ago (a process started after may
// still find it taken; callers that can, listen on port 0 instead).
func Get() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Must is Get for a test: it fails the test when no port is free.
func Must(t testing.TB) int {
	t.Helper()
	p, err := Get()
	if err != nil {
		t.Fatal(err)
	}
	return p
}
