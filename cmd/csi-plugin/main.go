// Command csi-plugin is modelcast's one binary: the CSI driver's services and the operator's
// subcommands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/redis/go-redis/v9"
	"k8s.io/klog/v2"

	"github.com/modelcast/modelcast/internal/version"
)

const usage = `usage: csi-plugin <command> [flags] [arguments]

commands:
  node        serve the CSI node service: stage models into the node's tmpfs cache, bind-mount them into pods
              (--kubelet-registration-dir: register with kubelet itself, without node-driver-registrar)
  controller  serve the CSI controller service: turn StorageClass parameters into volumes
  agent       stage a model through the cache and the broadcast chain, without CSI, and serve peers
  fetch       download a model from OSS into a directory, verified
  status      show model broadcasting from Redis: chains, positions, sources, progress
  sum         print the CRC-64 and size of every file under a directory, as OSS reports them
  version     print the version

csi-plugin <command> -h shows a command's usage and flags.
`

func main() {
	if len(os.Args) < 2 {
		os.Exit(exitStatus("", mainUsageError(errors.New("missing command")), os.Stdout, os.Stderr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	// go-redis logs its connection pool's troubles itself; they belong in klog, at V(4): the
	// chain reports what matters (Redis unreachable, falling back to OSS) once, at V(0)-V(2).
	redis.SetLogger(redisLogger{})
	cmd := os.Args[1]
	err := run(ctx, cmd, os.Args[2:])
	stop()
	klog.FlushAndExit(klog.ExitFlushTimeout, exitStatus(cmd, err, os.Stdout, os.Stderr))
}

// run runs one command. A command line it cannot run (or -h) is a *usageError.
func run(ctx context.Context, cmd string, args []string) error {
	switch cmd {
	case "node", "controller":
		return runServe(ctx, cmd, args)
	case "agent":
		return runAgent(ctx, args)
	case "fetch":
		return runFetch(ctx, args)
	case "status":
		return runStatus(ctx, args)
	case "sum":
		return runSum(ctx, args)
	case "version", "--version", "-version":
		if len(args) > 0 {
			return mainUsageError(fmt.Errorf("%s: unexpected argument %q", cmd, args[0]))
		}
		fmt.Fprintln(os.Stdout, version.Get())
		return nil
	case "help", "-h", "--help", "-help":
		if len(args) > 0 {
			return mainUsageError(fmt.Errorf("%s: unexpected argument %q (for a command's flags: csi-plugin <command> -h)", cmd, args[0]))
		}
		return mainUsageError(flag.ErrHelp)
	default:
		return mainUsageError(fmt.Errorf("unknown command %q", cmd))
	}
}

// exitStatus reports how a command ended and returns the process's exit status: 0 when it
// succeeded or was asked for its usage (-h, printed to stdout), 2 for a command line it cannot
// run (what is wrong, then its usage, to stderr), 1 when it failed (logged).
func exitStatus(cmd string, err error, stdout, stderr io.Writer) int {
	var ue *usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue) && errors.Is(ue.err, flag.ErrHelp):
		ue.usage(stdout)
		return 0
	case errors.As(err, &ue):
		for line := range strings.SplitSeq(ue.err.Error(), "\n") {
			fmt.Fprintf(stderr, "%s: %s\n", ue.name, line)
		}
		fmt.Fprintln(stderr)
		ue.usage(stderr)
		return 2
	default:
		klog.ErrorS(err, "Command failed", "command", cmd)
		return 1
	}
}

// usageError is a command line a command cannot run — a flag it does not know or whose value
// is wrong, a missing or stray argument — or flag.ErrHelp for -h and --help.
type usageError struct {
	name  string          // "csi-plugin fetch"
	err   error           // what is wrong, naming the flag or the argument
	usage func(io.Writer) // writes the command's usage
}

func (e *usageError) Error() string { return e.name + ": " + e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// usageErr is err as a usage error of the command whose flag set is fs (as Options.Validate's
// errors are).
func usageErr(fs *flag.FlagSet, err error) error {
	return &usageError{name: fs.Name(), err: err, usage: func(w io.Writer) {
		fs.SetOutput(w)
		fs.Usage()
	}}
}

func mainUsageError(err error) error {
	return &usageError{name: "csi-plugin", err: err, usage: func(w io.Writer) { fmt.Fprint(w, usage) }}
}

// toolFlagSet is the flag set of a tool command (fetch, status, sum, agent): its own flags
// and, of klog's, only -v and -vmodule, listed after its own by -h (after the usage text).
// Parse it with parseArgs.
func toolFlagSet(name, usage string) *flag.FlagSet {
	fs := commandFlagSet(name, usage)
	for _, n := range []string{"v", "vmodule"} {
		f := klogFlags().Lookup(n)
		fs.Var(f.Value, f.Name, f.Usage)
	}
	return fs
}

// serverFlagSet is the flag set of a server (node, controller): its own flags and all of
// klog's, which -h lists under a heading of their own, after the server's.
func serverFlagSet(name, usage string) *flag.FlagSet {
	fs := commandFlagSet(name, usage)
	klog.InitFlags(fs)
	return fs
}

func commandFlagSet(name, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet("csi-plugin "+name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		printFlags(fs.Output(), fs)
	}
	return fs
}

// klogFlags are klog's flags, as klog.InitFlags registers them (the same values).
var klogFlags = sync.OnceValue(func() *flag.FlagSet {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	return fs
})

// printFlags writes fs's flags as PrintDefaults does: the command's own under "flags:", then
// klog's under "logging flags (klog):".
func printFlags(w io.Writer, fs *flag.FlagSet) {
	own := flag.NewFlagSet(fs.Name(), flag.ContinueOnError)
	logging := flag.NewFlagSet(fs.Name(), flag.ContinueOnError)
	fs.VisitAll(func(f *flag.Flag) {
		to := own
		if k := klogFlags().Lookup(f.Name); k != nil && k.Value == f.Value {
			to = logging
		}
		to.Var(f.Value, f.Name, f.Usage)
		to.Lookup(f.Name).DefValue = f.DefValue // the default, not what the command line set
	})
	for _, section := range []struct {
		heading string
		fs      *flag.FlagSet
	}{{"flags:", own}, {"logging flags (klog):", logging}} {
		n := 0
		section.fs.VisitAll(func(*flag.Flag) { n++ })
		if n == 0 {
			continue
		}
		fmt.Fprintf(w, "\n%s\n", section.heading)
		section.fs.SetOutput(w)
		section.fs.PrintDefaults()
	}
}

// parseArgs parses a command's arguments: its flags, then exactly the positional arguments
// named (as its usage line names them). What it cannot take is a *usageError: main prints it
// with the usage and exits 2 (0 for -h).
func parseArgs(fs *flag.FlagSet, args []string, names ...string) error {
	out := fs.Output()
	fs.SetOutput(io.Discard) // the flag package's own error line and usage: main prints them
	err := fs.Parse(args)
	fs.SetOutput(out)
	switch {
	case err != nil:
		return usageErr(fs, err)
	case fs.NArg() > len(names):
		hint := ""
		if slices.ContainsFunc(fs.Args(), func(a string) bool { return strings.HasPrefix(a, "-") }) {
			hint = " (flags go before the arguments)"
		}
		return usageErr(fs, fmt.Errorf("unexpected argument %q%s", fs.Arg(len(names)), hint))
	case fs.NArg() < len(names):
		return usageErr(fs, fmt.Errorf("missing %s", strings.Join(names[fs.NArg():], " and ")))
	}
	return nil
}

type redisLogger struct{}

func (redisLogger) Printf(_ context.Context, format string, v ...any) {
	klog.V(4).InfoS("redis: " + fmt.Sprintf(format, v...))
}
