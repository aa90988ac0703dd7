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
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before, err := processCPU()
	if err != nil {
		b.Fatal(err)
	}
	var ru0 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	for b.Loop() {
		ping <- struct{}{}
		<-pong
	}
	b.StopTimer()
	after, err := processCPU()
	if err != nil {
		b.Fatal(err)
	}
	var ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	close(ping)
	<-done
	b.ReportMetric((after-before)*1e6/float64(b.N), "cpu-µs/op")
	b.ReportMetric(float64(ru1.Nvcsw-ru0.Nvcsw)/float64(b.N), "ctxsw/op")
}

// BenchmarkSyscall is the baseline: one cheap system call (getppid), no sleep, no wake-up.
func BenchmarkSyscall(b *testing.B) {
	for b.Loop() {
		syscall.Getppid()
	}
}
