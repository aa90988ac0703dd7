package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"k8s.io/klog/v2"

	"github.com/modelcast/modelcast/test/ossemu"
)

// shutdownGrace is how long requests in flight may finish after a signal.
const shutdownGrace = 5 * time.Second

// run seeds the emulator, serves until ctx ends, then stops gracefully.
// The ready line goes to stdout.
func run(ctx context.Context, o *options, stdout io.Writer) error {
	srv := ossemu.New(o.serverOptions())
	if err := seed(srv, o); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	endpoint := "http://" + ln.Addr().String()
	if o.addrFile != "" {
		if err := writeFileAtomic(o.addrFile, []byte(endpoint+"\n")); err != nil {
			_ = srv.Close()
			return err
		}
	}
	objects, bytes := srv.Totals()
	klog.InfoS("serving", "endpoint", endpoint, "objects", objects, "bytes", bytes,
		"firstByteLatency", o.speed.FirstByteLatency, "connBytesPerSec", o.speed.ConnBytesPerSec, "egressBytesPerSec", o.egressBytesPerSec)
	if _, err := fmt.Fprintln(stdout, "ossemu: serving", endpoint, fmt.Sprintf("(%d objects, %d bytes)", objects, bytes)); err != nil {
		klog.ErrorS(err, "write ready line")
	}
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	klog.InfoS("stopping", "grace", shutdownGrace)
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	err = <-served
	st := srv.Stats()
	if _, werr := fmt.Fprintf(stdout, "ossemu: served %d bytes in %d GET, %d HEAD and %d LIST requests\n",
		st.BytesServed, st.Requests[ossemu.OpGet], st.Requests[ossemu.OpHead], st.Requests[ossemu.OpList]); werr != nil {
		klog.ErrorS(werr, "write summary line")
	}
	return err
}

// seed creates the buckets and objects the flags ask for.
func seed(srv *ossemu.Server, o *options) error {
	for _, b := range o.buckets {
		srv.CreateBucket(b, ossemu.BucketOptions{PublicRead: o.publicRead})
	}
	for i, m := range o.models {
		srv.CreateBucket(m.bucket, ossemu.BucketOptions{PublicRead: o.publicRead})
		start := time.Now()
		dir := ""
		if o.generateDir != "" {
			dir = filepath.Join(o.generateDir, m.bucket, filepath.FromSlash(m.prefix))
		}
		objs, err := srv.GenerateModel(m.bucket, m.prefix, ossemu.ModelSpec{Size: m.size, Seed: int64(i + 1), Dir: dir})
		if err != nil {
			return fmt.Errorf("generate %s/%s: %w", m.bucket, m.prefix, err)
		}
		klog.InfoS("generated model", "bucket", m.bucket, "prefix", m.prefix, "objects", len(objs), "bytes", m.size, "duration", time.Since(start))
	}
	for _, l := range o.loads {
		srv.CreateBucket(l.bucket, ossemu.BucketOptions{PublicRead: o.publicRead})
		objs, err := srv.LoadDir(l.bucket, l.prefix, l.dir)
		if err != nil {
			return fmt.Errorf("load %s into %s/%s: %w", l.dir, l.bucket, l.prefix, err)
		}
		klog.InfoS("loaded directory", "bucket", l.bucket, "prefix", l.prefix, "dir", l.dir, "objects", len(objs))
	}
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
		return fmt.Errorf("address file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("address file: %w", err)
	}
	return nil
}
