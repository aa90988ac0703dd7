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
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/modelcast/modelcast/pkg/broadcast"
)

// BareHop is the baseline of a relay's CPU: what this machine's kernel charges for moving bytes
// through one node with nothing of modelcast in the way. One process sends a file with sendfile
// from a tmpfs file and receives it into a memory mapping of a huge-page tmpfs file
// (MADV_POPULATE_WRITE, one read per chunk-sized piece, woken when the piece is there), over as
// many TCP connections as a hop is striped over by default (piece i on connection i % stripes);
// no checksums, no framing, no HTTP, no Redis. Its CPU holds one receive and one send, with the receiving side's TCP
// processing of the send (loopback and veth run it in the sender's time), as a middle node's
// figure does.
type BareHop struct {
	CPU   float64 // core-seconds of the process while the bytes moved
	Bytes int64
}

// PerGB is its core-seconds per GB moved.
func (b *BareHop) PerGB() float64 { return b.CPU / (float64(b.Bytes) / 1e9) }

// A bare hop moves its bytes as a hop does by default: in pieces of a chunk's size, piece i on
// TCP connection i % hopStripes.
const (
	bareHopPiece = broadcast.DefaultChunkSize
	hopStripes   = broadcast.DefaultStripes
)

// loopback is the machine's own namespace, for a bare hop without a simulated link.
var loopback = Host{IP: "127.0.0.1"}

// bareHop moves size bytes through one receive and one send, from host from to host to (each
// socket made in its host's network namespace; loopback for both: no simulated link), and
// measures this process's CPU meanwhile (nothing else of the benchmark runs then).
func bareHop(ctx context.Context, dir string, size int64, from, to Host) (*BareHop, error) {
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

	var ln net.Listener
	if err := inNetns(from.NS, func() (err error) {
		// The data plane's listener, with its congestion control: the floor sends as a hop does.
		var warn error
		ln, warn, err = broadcast.Listen(ctx, net.JoinHostPort(from.IP, "0"), broadcast.DefaultCongestionControl)
		if err == nil && warn != nil {
			ln.Close()
			return warn
		}
		return err
	}); err != nil {
		return nil, err
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	var conns []net.Conn // the receiving ends, by stripe
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	before, err := processCPU()
	if err != nil {
		return nil, err
	}
	var g errgroup.Group
	g.Go(func() error { // the sender: accepts the stripes and sends each its pieces
		var sg errgroup.Group
		for range hopStripes {
			c, err := ln.Accept()
			if err != nil {
				return err
			}
			sg.Go(func() error {
				defer c.Close()
				stop := context.AfterFunc(ctx, func() { c.Close() })
				defer stop()
				// The stripe reads which one it is, then gets its pieces: one sendfile each
				// (ReadFrom sees the *os.File under the limit, as the server's io.CopyN does).
				var k [1]byte
				if _, err := io.ReadFull(c, k[:]); err != nil {
					return err
				}
				f, err := os.Open(src.Name())
				if err != nil {
					return err
				}
				defer f.Close()
				for off := int64(k[0]) * bareHopPiece; off < size; off += hopStripes * bareHopPiece {
					if _, err := f.Seek(off, io.SeekStart); err != nil {
						return err
					}
					if _, err := c.(*net.TCPConn).ReadFrom(io.LimitReader(f, min(bareHopPiece, size-off))); err != nil {
						return err
					}
				}
				return nil
			})
		}
		return sg.Wait()
	})
	for k := range hopStripes {
		var c net.Conn
		if err := inNetns(to.NS, func() (err error) {
			var d net.Dialer
			c, err = d.DialContext(ctx, "tcp", ln.Addr().String())
			return err
		}); err != nil {
			cancel() // the sender's accept ends with the listener
			ln.Close()
			_ = g.Wait()
			return nil, err
		}
		conns = append(conns, c)
		g.Go(func() error { // a receiving stripe: its pieces, in order, into the mapping
			stop := context.AfterFunc(ctx, func() { c.Close() })
			defer stop()
			// Each piece is sure to come whole: reads wait for it (SO_RCVLOWAT), as a hop's
			// receiver waits for the rest of its chunk, rather than wake for every few KB.
			if err := setLowat(c, int(bareHopPiece)); err != nil {
				return err
			}
			if _, err := c.Write([]byte{byte(k)}); err != nil {
				return err
			}
			for off := int64(k) * bareHopPiece; off < size; off += hopStripes * bareHopPiece {
				b := mapped[off:min(off+bareHopPiece, size)]
				_ = unix.Madvise(b, unix.MADV_POPULATE_WRITE)
				if _, err := io.ReadFull(c, b); err != nil {
					return fmt.Errorf("receive at %d: %w", off, err)
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("bare hop: %w", err)
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

// setLowat sets c's SO_RCVLOWAT to n bytes.
func setLowat(c net.Conn, n int) error {
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT, n) }); err != nil {
		return err
	}
	return serr
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

// inNetns runs f on a thread of its own in network namespace ns ("": this process's), so the
// sockets f makes belong to ns; they work from any thread afterwards. The thread goes back to
// this process's namespace before it is handed back to the runtime. It must not end with f's
// goroutine: the kernel sends a child's Pdeathsig when the thread that started it ends, and
// the runtime reuses threads, so ending one killed whatever service (redis-server, the OSS
// emulator) it had once started. Only if going back fails is the thread left to end.
func inNetns(ns string, f func() error) error {
	if ns == "" {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open this thread's network namespace: %w", err)
			return
		}
		defer unix.Close(home)
		fd, err := unix.Open(filepath.Join("/run/netns", ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open network namespace %s: %w", ns, err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace %s: %w", ns, err)
			return
		}
		err = f()
		if unix.Setns(home, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		} // else: still locked, the runtime ends the thread with this goroutine
		errc <- err
	}()
	return <-errc
}
