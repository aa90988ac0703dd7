package netbench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// BareHop is the baseline of a relay's CPU: what this machine's kernel charges for moving bytes
// through one node with nothing of modelcast in the way. One process receives a file over a
// loopback TCP connection into a memory mapping of a huge-page tmpfs file, as a relay does
// (MADV_POPULATE_WRITE, 256 KiB reads), and sends the bytes with sendfile from a tmpfs file,
// as a relay does; no checksums, no framing, no HTTP, no Redis. Its CPU holds one receive and
// one send, with the receiving side's TCP processing of the send (loopback runs it in the
// sender's time), as a middle node's figure does.
type BareHop struct {
	CPU   float64 // core-seconds of the process while the bytes moved
	Bytes int64
}

// PerGB is its core-seconds per GB moved.
func (b *BareHop) PerGB() float64 { return b.CPU / (float64(b.Bytes) / 1e9) }

// bareHop moves size bytes through one receive and one send on loopback and measures this
// process's CPU meanwhile (nothing else of the benchmark runs then).
func bareHop(ctx context.Context, dir string, size int64) (*BareHop, error) {
	if err := warmMemory(dir, 3*cacheSize(size)); err != nil {
		return nil, err
	}
	root := filepath.Join(dir, "barehop")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(root)
	if err := unix.Mount("tmpfs", root, "tmpfs", 0, fmt.Sprintf("size=%d,huge=within_size", 2*size+64<<20)); err != nil {
		return nil, fmt.Errorf("mount a tmpfs for the bare hop: %w", err)
	}
	defer func() { _ = unix.Unmount(root, unix.MNT_DETACH) }()
	src, err := writeRandom(filepath.Join(root, "src"), size)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	dst, err := os.OpenFile(filepath.Join(root, "dst"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	defer dst.Close()
	if err := dst.Truncate(size); err != nil {
		return nil, err
	}
	mapped, err := unix.Mmap(int(dst.Fd()), 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map the bare hop's file: %w", err)
	}
	defer func() { _ = unix.Munmap(mapped) }()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	before, err := processCPU()
	if err != nil {
		return nil, err
	}
	sent := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			sent <- err
			return
		}
		defer c.Close()
		stop := context.AfterFunc(ctx, func() { c.Close() })
		defer stop()
		if _, err := src.Seek(0, io.SeekStart); err != nil {
			sent <- err
			return
		}
		// sendfile: ReadFrom sees the *os.File under the limit, as the server's io.CopyN does.
		_, err = c.(*net.TCPConn).ReadFrom(io.LimitReader(src, size))
		sent <- err
	}()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	stopConn := context.AfterFunc(ctx, func() { c.Close() })
	defer stopConn()
	const piece = 256 << 10
	for off := int64(0); off < size; off += piece {
		b := mapped[off:min(off+piece, size)]
		_ = unix.Madvise(b, unix.MADV_POPULATE_WRITE)
		if _, err := io.ReadFull(c, b); err != nil {
			return nil, fmt.Errorf("bare hop: receive at %d: %w", off, err)
		}
	}
	if err := <-sent; err != nil {
		return nil, fmt.Errorf("bare hop: send: %w", err)
	}
	after, err := processCPU()
	if err != nil {
		return nil, err
	}
	// The bytes arrived whole (checked after the measure, which it is not part of).
	want, err := unix.Mmap(int(src.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map the bare hop's source: %w", err)
	}
	defer func() { _ = unix.Munmap(want) }()
	if !bytes.Equal(mapped, want) {
		return nil, errors.New("bare hop: the received bytes differ from the sent ones")
	}
	return &BareHop{CPU: after - before, Bytes: size}, nil
}

// processCPU is this process's user + system time so far, in seconds.
func processCPU() (float64, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds(), nil
}

// writeRandom writes size pseudo-random bytes to a new file at path and returns it open.
func writeRandom(path string, size int64) (*os.File, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 4<<20)
	r := rand.NewChaCha8([32]byte{1})
	for left := size; left > 0; left -= int64(len(buf)) {
		_, _ = r.Read(buf)
		if _, err := f.Write(buf[:min(int64(len(buf)), left)]); err != nil {
			f.Close()
			return nil, fmt.Errorf("write %s: %w", path, err)
		}
	}
	return f, nil
}
