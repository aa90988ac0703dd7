package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/modelcast/modelcast/internal/units"
	"github.com/modelcast/modelcast/pkg/ossclient"
)

const fetchUsage = `usage: csi-plugin fetch [flags] oss://bucket/prefix/ DIR

Downloads every object under the prefix into DIR (created if missing; must be empty), with
parallel ranged GETs, every object's CRC-64 checked against OSS. Files are written under
DIR/.modelcast-partial-* and moved into DIR once every one is verified: a fetch that fails
or is interrupted leaves DIR empty. Credentials come from
OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET and OSS_SESSION_TOKEN (anonymous when unset);
OSS_ENDPOINT and OSS_REGION are the defaults of -endpoint and -region.
`

func runFetch(ctx context.Context, args []string) error {
	fs := toolFlagSet("fetch", fetchUsage)
	env := ossclient.EnvConfig(os.Getenv)
	fs.StringVar(&env.Endpoint, "endpoint", env.Endpoint, "OSS endpoint (https unless a scheme is given)")
	fs.StringVar(&env.Region, "region", env.Region, "OSS region, e.g. cn-beijing")
	fs.BoolVar(&env.UsePathStyle, "path-style", false, "address buckets as endpoint/bucket/ instead of bucket.endpoint/")
	fs.StringVar(&env.SignatureVersion, "sign", ossclient.SignV4, "signature version: v4 or v1")
	vcpus := fs.Int("vcpus", 16, "prefetch.vcpus: parallel requests = vcpus × workers")
	workers := fs.Int("workers", 16, "prefetch.workers: parallel requests per vCPU")
	partSize := fs.Int64("part-size", ossclient.DefaultPartSize, "bytes per ranged GET")
	if err := parseArgs(fs, args, "oss://bucket/prefix/", "DIR"); err != nil {
		return err
	}
	var bad []error
	if env.SignatureVersion != ossclient.SignV4 && env.SignatureVersion != ossclient.SignV1 {
		bad = append(bad, fmt.Errorf("--sign %q: want %s or %s", env.SignatureVersion, ossclient.SignV4, ossclient.SignV1))
	}
	if *vcpus < 1 {
		bad = append(bad, fmt.Errorf("--vcpus %d: want 1 or more", *vcpus))
	}
	if *workers < 1 {
		bad = append(bad, fmt.Errorf("--workers %d: want 1 or more", *workers))
	}
	if *partSize < 1 {
		bad = append(bad, fmt.Errorf("--part-size %d: want a positive number of bytes", *partSize))
	}
	if len(bad) > 0 {
		return usageErr(fs, errors.Join(bad...))
	}
	uri, err := ossclient.ParseURI(fs.Arg(0))
	if err != nil {
		return usageErr(fs, err)
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
	stopNotes := noteSlow(os.Stderr, fmt.Sprintf("listing %s at %s (a LIST, then a HEAD per object)", uri, client.Endpoint()), slowAfter, slowEvery)
	m, err := client.Manifest(ctx, uri)
	stopNotes()
	if err != nil {
		return err
	}
	listed := time.Since(start)
	fmt.Fprintf(os.Stdout, "modelcast fetch: %s -> %s: %d objects, %s (listed in %.2f s)\n", uri, dir, len(m.Objects), units.Bytes(m.Size()), listed.Seconds())

	// Everything is written under a hidden directory of DIR and moved into DIR only once
	// verified: files are preallocated at full size, so a failed fetch would otherwise leave
	// complete-looking files with wrong bytes.
	partial, err := os.MkdirTemp(dir, partialPrefix)
	if err != nil {
		return err
	}
	defer os.RemoveAll(partial) // empty after a commit; what a failure wrote otherwise

	var done, verified atomic.Int64
	bar := newProgressBar(os.Stderr, m.Size())
	stopBar := bar.run(&done, &verified)
	dlStart := time.Now()
	err = client.Download(ctx, m, partial, ossclient.DownloadOptions{
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
	if err := commitDir(partial, dir); err != nil {
		return fmt.Errorf("move the verified model into %s: %w", dir, err)
	}
	secs := time.Since(dlStart).Seconds()
	fmt.Fprintf(os.Stdout, "  size      %s (%d bytes)\n", units.Bytes(m.Size()), m.Size())
	fmt.Fprintf(os.Stdout, "  time      %.2f s download, %.2f s total\n", secs, time.Since(start).Seconds())
	fmt.Fprintf(os.Stdout, "  rate      %.2f GB/s\n", float64(m.Size())/secs/1e9)
	fmt.Fprintf(os.Stdout, "  verified  CRC-64 of all %d objects matched OSS (fingerprint %.16s)\n", len(m.Objects), m.Fingerprint())
	return nil
}

// partialPrefix names the directory under DIR a fetch writes into before its files are
// verified.
const partialPrefix = ".modelcast-partial-"

// emptyDir makes sure dir exists and holds nothing: a fetch never mixes with stale files. What
// an interrupted fetch left (a partial directory, when it was killed) is removed first.
func emptyDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), partialPrefix) {
			return fmt.Errorf("directory %s is not empty", dir)
		}
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("remove what an interrupted fetch left: %w", err)
		}
	}
	return nil
}

// commitDir moves every entry of the verified partial directory into dir. If a move fails,
// the entries already moved are removed again: dir holds the whole model or nothing.
func commitDir(partial, dir string) error {
	entries, err := os.ReadDir(partial)
	if err != nil {
		return err
	}
	for i, e := range entries {
		if err := os.Rename(filepath.Join(partial, e.Name()), filepath.Join(dir, e.Name())); err != nil {
			for _, moved := range entries[:i] {
				_ = os.RemoveAll(filepath.Join(dir, moved.Name()))
			}
			return err
		}
	}
	return nil
}

// Slow requests: fetch says what it is waiting for once a listing has taken slowAfter, and
// again every slowEvery (the SDK waits up to 30 s for an answer, and tries 5 times).
const (
	slowAfter = 3 * time.Second
	slowEvery = 10 * time.Second
)

// noteSlow prints a line to w when what it describes has taken after, then every every,
// until the returned function is called.
func noteSlow(w io.Writer, what string, after, every time.Duration) (stop func()) {
	quit, finished := make(chan struct{}), make(chan struct{})
	start := time.Now()
	go func() {
		defer close(finished)
		t := time.NewTimer(after)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				fmt.Fprintf(w, "modelcast fetch: still %s: no answer from OSS after %s; waiting (requests time out and are retried)\n",
					what, time.Since(start).Round(time.Second))
				t.Reset(every)
			}
		}
	}()
	return func() { close(quit); <-finished }
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
