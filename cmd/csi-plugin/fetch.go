package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/modelcast/modelcast/internal/units"
	"github.com/modelcast/modelcast/pkg/ossclient"
)

const fetchUsage = `usage: csi-plugin fetch [flags] oss://bucket/prefix/ DIR

Downloads every object under the prefix into DIR (created if missing; must be empty), with
parallel ranged GETs, every object's CRC-64 checked against OSS. Credentials come from
OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET and OSS_SESSION_TOKEN (anonymous when unset);
OSS_ENDPOINT and OSS_REGION are the defaults of -endpoint and -region.

flags:
`

func runFetch(ctx context.Context, args []string) error {
	fs := newFlagSet("fetch")
	env := ossclient.EnvConfig(os.Getenv)
	fs.StringVar(&env.Endpoint, "endpoint", env.Endpoint, "OSS endpoint (https unless a scheme is given)")
	fs.StringVar(&env.Region, "region", env.Region, "OSS region, e.g. cn-beijing")
	fs.BoolVar(&env.UsePathStyle, "path-style", false, "address buckets as endpoint/bucket/ instead of bucket.endpoint/")
	fs.StringVar(&env.SignatureVersion, "sign", ossclient.SignV4, "signature version: v4 or v1")
	vcpus := fs.Int("vcpus", 16, "prefetch.vcpus: parallel requests = vcpus × workers")
	workers := fs.Int("workers", 16, "prefetch.workers: parallel requests per vCPU")
	partSize := fs.Int64("part-size", ossclient.DefaultPartSize, "bytes per ranged GET")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), fetchUsage)
		fs.PrintDefaults()
	}
	_ = fs.Parse(args)
	if fs.NArg() != 2 {
		fs.Usage()
		os.Exit(2)
	}
	uri, err := ossclient.ParseURI(fs.Arg(0))
	if err != nil {
		return err
	}
	dir := fs.Arg(1)
	if err := emptyDir(dir); err != nil {
		return err
	}
	client, err := ossclient.New(env)
	if err != nil {
		return err
	}

	start := time.Now()
	m, err := client.Manifest(ctx, uri)
	if err != nil {
		return err
	}
	listed := time.Since(start)
	fmt.Fprintf(os.Stdout, "modelcast fetch: %s -> %s: %d objects, %s (listed in %.2f s)\n", uri, dir, len(m.Objects), units.Bytes(m.Size()), listed.Seconds())

	var done, verified atomic.Int64
	bar := newProgressBar(os.Stderr, m.Size())
	stopBar := bar.run(&done, &verified)
	dlStart := time.Now()
	err = client.Download(ctx, m, dir, ossclient.DownloadOptions{
		Concurrency: *vcpus * *workers,
		PartSize:    *partSize,
		Progress: func(p ossclient.Progress) {
			done.Store(p.Done)
			verified.Store(p.Verified)
		},
	})
	stopBar()
	if err != nil {
		return err
	}
	secs := time.Since(dlStart).Seconds()
	fmt.Fprintf(os.Stdout, "  size      %s (%d bytes)\n", units.Bytes(m.Size()), m.Size())
	fmt.Fprintf(os.Stdout, "  time      %.2f s download, %.2f s total\n", secs, time.Since(start).Seconds())
	fmt.Fprintf(os.Stdout, "  rate      %.2f GB/s\n", float64(m.Size())/secs/1e9)
	fmt.Fprintf(os.Stdout, "  verified  CRC-64 of all %d objects matched OSS (fingerprint %.16s)\n", len(m.Objects), m.Fingerprint())
	return nil
}

// emptyDir makes sure dir exists and holds nothing: a fetch never mixes with stale files.
func emptyDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Readdirnames(1); !errors.Is(err, io.EOF) {
		if err == nil {
			return fmt.Errorf("directory %s is not empty", dir)
		}
		return err
	}
	return nil
}

// progressBar draws download progress on a terminal, or prints a line every few seconds
// when the output is a file or a pipe.
type progressBar struct {
	w     io.Writer
	total int64
	tty   bool
}

func newProgressBar(f *os.File, total int64) *progressBar {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return &progressBar{w: f, total: total, tty: err == nil}
}

// run draws until the returned stop function is called; stop draws the final state.
func (b *progressBar) run(done, verified *atomic.Int64) (stop func()) {
	quit, finished := make(chan struct{}), make(chan struct{})
	start := time.Now()
	every := 200 * time.Millisecond
	if !b.tty {
		every = 2 * time.Second
	}
	go func() {
		defer close(finished)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				b.draw(done.Load(), verified.Load(), time.Since(start), false)
			case <-quit:
				b.draw(done.Load(), verified.Load(), time.Since(start), true)
				return
			}
		}
	}()
	return func() { close(quit); <-finished }
}

func (b *progressBar) draw(done, verified int64, elapsed time.Duration, last bool) {
	frac := 1.0
	if b.total > 0 {
		frac = float64(done) / float64(b.total)
	}
	const width = 30
	filled := int(frac * width)
	rate := float64(done) / max(elapsed.Seconds(), 1e-3)
	line := fmt.Sprintf("[%s%s] %5.1f%%  %s / %s  %.2f GB/s  verified %s",
		strings.Repeat("#", filled), strings.Repeat(".", width-filled), frac*100,
		units.Bytes(done), units.Bytes(b.total), rate/1e9, units.Bytes(verified))
	switch {
	case b.tty && last:
		fmt.Fprintf(b.w, "\r%s\n", line)
	case b.tty:
		fmt.Fprintf(b.w, "\r%s", line)
	default:
		fmt.Fprintln(b.w, line)
	}
}
