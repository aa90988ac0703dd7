// Command csi-plugin is modelcast's one binary: the CSI driver's services and the operator's
// subcommands.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/redis/go-redis/v9"
	"k8s.io/klog/v2"

	"github.com/modelcast/modelcast/internal/version"
)

const usage = `usage: csi-plugin <command> [flags]

commands:
  node        serve the CSI node service: stage models into the node's tmpfs cache, bind-mount them into pods
              (--kubelet-registration-dir: register with kubelet itself, without node-driver-registrar)
  controller  serve the CSI controller service: turn StorageClass parameters into volumes
  agent       stage a model through the cache and the broadcast chain, without CSI, and serve peers (csi-plugin agent -h)
  fetch       download a model from OSS into a directory, verified (csi-plugin fetch -h)
  status      show model broadcasting from Redis: chains, positions, sources, progress (csi-plugin status -h)
  sum         print the CRC-64 and size of every file under a directory, as OSS reports them (csi-plugin sum -h)
  version     print the version
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// go-redis logs its connection pool's troubles itself; they belong in klog, at V(4): the
	// chain reports what matters (Redis unreachable, falling back to OSS) once, at V(0)-V(2).
	redis.SetLogger(redisLogger{})
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "node", "controller":
		err = runServe(ctx, cmd, args)
	case "agent":
		err = runAgent(ctx, args)
	case "fetch":
		err = runFetch(ctx, args)
	case "status":
		err = runStatus(ctx, args)
	case "sum":
		err = runSum(ctx, args)
	case "version", "--version", "-version":
		fmt.Fprintln(os.Stdout, version.Get())
	case "help", "-h", "--help":
		fmt.Fprint(os.Stdout, usage)
	default:
		fmt.Fprintf(os.Stderr, "csi-plugin: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if err != nil {
		klog.ErrorS(err, "Command failed", "command", os.Args[1])
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	klog.Flush()
}

type redisLogger struct{}

func (redisLogger) Printf(_ context.Context, format string, v ...any) {
	klog.V(4).InfoS("redis: " + fmt.Sprintf(format, v...))
}

// newFlagSet returns a flag set for a subcommand with klog's flags (-v, …) registered.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("csi-plugin "+name, flag.ExitOnError)
	klog.InitFlags(fs)
	return fs
}
