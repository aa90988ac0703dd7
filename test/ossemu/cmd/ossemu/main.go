// Command ossemu runs the OSS emulator of package ossemu as a process, for
// demos and benchmarks. See --help for the flags.
package main

import (
	"context"
	"flag"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/klog/v2"
)

func main() {
	fs := flag.NewFlagSet("ossemu", flag.ExitOnError)
	klog.InitFlags(fs)
	opts := defaultOptions()
	opts.addFlags(fs)
	_ = fs.Parse(os.Args[1:])
	if err := opts.validate(os.Getenv); err != nil {
		klog.ErrorS(err, "invalid flags")
		klog.FlushAndExit(klog.ExitFlushTimeout, 2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, opts, os.Stdout); err != nil {
		klog.ErrorS(err, "ossemu stopped")
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	klog.Flush()
}
