package netbench

import (
	"runtime"
	"syscall"
	"testing"
)

// BenchmarkThreadWake measures what a thread's sleep and wake-up costs on this machine: two
// goroutines, each locked to its own thread, hand a token back and forth over channels, so every
// hand-off puts one thread to sleep and wakes the other. It reports the process's CPU per
// round trip (two wake-ups) beside the time. A relay that goes idle between chunks pays this a
// few times per chunk; on a machine where it is dear, that, not the bytes, is most of a relay's
// CPU (docs/design.md). Run: go test -run '^$' -bench ThreadWake ./test/netbench/
func BenchmarkThreadWake(b *testing.B) {
	ping, pong := make(chan struct{}), make(chan struct{})
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer close(done)
		for range ping {
			pong <- struct{}{}
		}
	}()
	defer func() { close(ping); <-done }() // the partner ends on every path, b.Fatal's too
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var before, after syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &before); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		ping <- struct{}{}
		<-pong
	}
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &after); err != nil {
		b.Fatal(err)
	}
	cpu := after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano()
	b.ReportMetric(float64(cpu)/1e3/float64(b.N), "cpu-µs/op")
	b.ReportMetric(float64(after.Nvcsw-before.Nvcsw)/float64(b.N), "ctxsw/op")
}

// BenchmarkSyscall is the baseline: one cheap system call (getppid), no sleep, no wake-up.
func BenchmarkSyscall(b *testing.B) {
	for b.Loop() {
		syscall.Getppid()
	}
}
