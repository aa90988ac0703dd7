// Command netbench is make bench's multi-node part: it turns this machine into hosts (network
// namespaces on a bridge, links shaped with tc), runs the OSS emulator (object-store profile),
// a real redis-server and one node agent per host, measures every scenario, and writes a
// Markdown report and PNG plots. Before that it measures a chain's head alone against a direct
// fetch on loopback (head.md). It removes everything it created, also after a failure or
// Ctrl-C.
//
// --only and --size run a part of it, for trying the harness: for example
//
//	go run ./test/netbench/cmd/netbench --only chain:8,slow --size 64MiB --out /tmp/nb
//
// runs the plain chain of 8 and the one-slow-host scenario with a 64 MiB model. Such a run
// writes into a temporary directory unless --out is given, never into docs/bench by default.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/modelcast/modelcast/test/netbench"
	"github.com/modelcast/modelcast/test/ossemu"
)

func main() {
	out := flag.String("out", "docs/bench", "directory for broadcast.md, head.md and the plots")
	quick := flag.Bool("quick", false, "a short matrix (N 1, 2, 4; 256 MiB) to try the harness")
	only := flag.String("only", "", "comma-separated families to run: head, chain, direct, late, fail, slow, scale; kind:N for one N (default: all)")
	size := flag.String("size", "", "the main part's and the head benchmark's model size, such as 64MiB (default 1GiB; --quick 256MiB)")
	flag.Parse()
	o := netbench.Options{Out: *out, Quick: *quick, Command: "make bench"}
	if *only != "" {
		o.Only = strings.Split(*only, ",")
		if err := netbench.CheckOnly(o.Only); err != nil {
			fail(err)
		}
	}
	if *size != "" {
		v, err := ossemu.ParseSize(*size)
		if err != nil || v <= 0 {
			fail(fmt.Errorf("--size %s: want a positive size (%v)", *size, err))
		}
		o.Size = v
	}
	if *quick || *only != "" || *size != "" {
		o.Command = "go run ./test/netbench/cmd/netbench " + strings.Join(os.Args[1:], " ")
		outSet := false
		flag.Visit(func(f *flag.Flag) { outSet = outSet || f.Name == "out" })
		if !outSet && (*only != "" || *size != "") {
			dir, err := os.MkdirTemp("", "netbench-out-")
			if err != nil {
				fail(err)
			}
			o.Out = dir
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	o.Log = func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
	if err := netbench.RunMatrix(ctx, o); err != nil {
		stop()
		fail(err)
	}
	o.Log("wrote %s", o.Out)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "netbench:", err)
	os.Exit(1)
}
