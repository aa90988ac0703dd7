// Command netbench is make bench's multi-node part: it turns this machine into hosts (network
// namespaces on a bridge, links shaped with tc), runs the OSS emulator, a real redis-server
// and one node agent per host, measures every scenario, and writes a Markdown report and PNG
// plots. It removes everything it created, also after a failure or Ctrl-C.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/modelcast/modelcast/test/netbench"
)

func main() {
	out := flag.String("out", "docs/bench", "directory for broadcast.md and the plots")
	quick := flag.Bool("quick", false, "a short matrix (N 1, 2, 4; 256 MiB) to try the harness")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	if err := netbench.RunMatrix(ctx, *out, *quick, func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}); err != nil {
		fmt.Fprintln(os.Stderr, "netbench:", err)
		os.Exit(1)
	}
}
