// Command redisd serves the Redis protocol from memory with
// github.com/alicebob/miniredis/v2, so that `make demo` runs on a machine
// that has Go but no redis-server. It is the demo's embedded default only:
// tests run a real redis-server (package test/redistest).
//
// Keys expire with the wall clock, as in Redis (miniredis's ClockTTL), so
// TTL heartbeats behave. Once listening it prints one line,
// "redisd: serving HOST:PORT (miniredis)", on stdout, writes "HOST:PORT\n"
// to --addr-file if given, and serves until SIGINT or SIGTERM. Data is lost
// when it stops.
//
// Usage:
//
//	redisd [--listen 127.0.0.1:0] [--addr-file PATH] [--username U --password P]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/alicebob/miniredis/v2"
	"k8s.io/klog/v2"
)

func main() {
	fs := flag.NewFlagSet("redisd", flag.ExitOnError)
	klog.InitFlags(fs)
	opts := defaultOptions()
	opts.addFlags(fs)
	_ = fs.Parse(os.Args[1:])
	if err := opts.validate(); err != nil {
		klog.ErrorS(err, "invalid flags")
		klog.FlushAndExit(klog.ExitFlushTimeout, 2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, opts, os.Stdout); err != nil {
		klog.ErrorS(err, "redisd stopped")
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	klog.Flush()
}

// options are the command's flags.
type options struct {
	listen   string
	addrFile string
	username string
	password string
}

func defaultOptions() *options { return &options{listen: "127.0.0.1:0"} }

func (o *options) addFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.listen, "listen", o.listen, "address to listen on (port 0: any free port)")
	fs.StringVar(&o.addrFile, "addr-file", o.addrFile, `write "host:port\n" to this file once listening`)
	fs.StringVar(&o.username, "username", o.username, "require AUTH as this user (needs --password)")
	fs.StringVar(&o.password, "password", o.password, "require AUTH with this password (for user \"default\" unless --username)")
}

func (o *options) validate() error {
	var errs []error
	if o.listen == "" {
		errs = append(errs, errors.New("--listen is empty"))
	}
	if o.username != "" && o.password == "" {
		errs = append(errs, errors.New("--username needs --password"))
	}
	return errors.Join(errs...)
}

// run serves until ctx ends. The ready line goes to stdout.
func run(ctx context.Context, o *options, stdout io.Writer) error {
	m := miniredis.NewMiniRedis()
	m.ClockTTL(true) // expire keys with the wall clock, not only on FastForward
	switch {
	case o.username != "":
		m.RequireUserAuth(o.username, o.password)
	case o.password != "":
		m.RequireAuth(o.password)
	}
	if err := m.StartAddr(o.listen); err != nil {
		return fmt.Errorf("listen on %s: %w", o.listen, err)
	}
	defer m.Close()
	addr := m.Addr()
	if o.addrFile != "" {
		if err := writeFileAtomic(o.addrFile, []byte(addr+"\n")); err != nil {
			return err
		}
	}
	klog.InfoS("serving", "addr", addr, "auth", o.password != "")
	if _, err := fmt.Fprintf(stdout, "redisd: serving %s (miniredis)\n", addr); err != nil {
		klog.ErrorS(err, "write ready line")
	}
	<-ctx.Done()
	klog.InfoS("stopping", "addr", addr)
	return nil
}

// writeFileAtomic writes path through a rename, so a reader polling for it
// never sees it partly written.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("address file: %w", err)
	}
	_, werr := tmp.Write(data)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("address file %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("address file %s: %w", path, err)
	}
	return nil
}
