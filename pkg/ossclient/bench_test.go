package ossclient_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/aliyun/alibabacloud-oss-go-sdk-v2/oss"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/modelcast/modelcast/pkg/ossclient"
	"github.com/modelcast/modelcast/test/ossemu"
)

// The download benchmark puts one model from the emulator into tmpfs four ways, in one run:
//
//	tmpfs-write       the bytes written from memory into tmpfs files: what this machine can do at best
//	modelcast         Client.Download (parallel ranged GETs, in-line CRC-64, preallocated files)
//	sdk-downloader    the SDK's Downloader.DownloadFile, tuned (see sdkParallel, sdkPartSize)
//	sequential-get    one plain GET per object (the SDK's GetObjectToFile, which checks CRC-64 too)
//	network-only      the same parallel ranged GETs with the bytes dropped on arrival: the ceiling
//	                  the emulator and loopback TCP set for any client on this machine
//
// Each round runs the four in turn (MODELCAST_BENCH_ROUNDS, default 3) and the benchmark
// reports every contender's median rate and the ratios that matter, all from the same run of a
// noisy shared machine. MODELCAST_BENCH_SIZE sets the model size (default 4GiB);
// MODELCAST_BENCH_PROFILE the emulator's profile (default loopback; object-store makes every
// request wait 20 ms and caps each connection at 50 MB/s, as an object store does: see
// test/ossemu). Under object-store, sequential-get is left out: one connection at a time is
// held to the per-connection rate, 50 MB/s, and would take minutes. As root the
// emulator's files and the targets live on tmpfs mounts of their own (MODELCAST_BENCH_HUGE sets
// the target's huge= option, default within_size); otherwise under /dev/shm.
//
//	go test -run '^$' -bench 'Download$' -benchtime 1x ./pkg/ossclient/

// The SDK downloader's best settings on this machine, from a sweep of ParallelNum 4..64,
// PartSize 4..64 MiB and 1..4 objects at a time (docs/benchmarks.md).
const (
	sdkParallel       = 16
	sdkPartSize       = 16 << 20
	sdkObjectsAtOnce  = 2
	defaultBenchBytes = 4 << 30
)

type benchEnv struct {
	client  *ossclient.Client
	m       *ossclient.Manifest
	data    [][]byte // each object's bytes, for tmpfs-write
	dst     string   // tmpfs for targets
	cleanup []func()
}

var (
	benchOnce sync.Once
	bench     *benchEnv
	benchErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if bench != nil {
		for i := len(bench.cleanup) - 1; i >= 0; i-- {
			bench.cleanup[i]()
		}
	}
	os.Exit(code)
}

func getBenchEnv(b *testing.B) *benchEnv {
	benchOnce.Do(func() { bench, benchErr = newBenchEnv() })
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	return bench
}

func newBenchEnv() (*benchEnv, error) {
	size := int64(defaultBenchBytes)
	if s := os.Getenv("MODELCAST_BENCH_SIZE"); s != "" {
		v, err := ossemu.ParseSize(s)
		if err != nil {
			return nil, err
		}
		size = v
	}
	e := &benchEnv{}
	src, err := e.tmpfs("src", size+size/8, "")
	if err != nil {
		return nil, err
	}
	huge := os.Getenv("MODELCAST_BENCH_HUGE")
	if huge == "" {
		huge = "within_size"
	}
	if e.dst, err = e.tmpfs("dst", size+size/8, "huge="+huge); err != nil {
		return nil, err
	}
	// The emulator runs as a process of its own, as OSS is remote: it does not share this
	// process's scheduler and garbage collector with the contenders.
	endpoint, err := e.startEmulator(src, size)
	if err != nil {
		return nil, err
	}
	if e.client, err = ossclient.New(ossclient.Config{Endpoint: endpoint, Region: testRegion, Credentials: testKeys}); err != nil {
		return nil, err
	}
	if e.m, err = e.client.Manifest(context.Background(), ossclient.URI{Bucket: "models", Prefix: "bench/"}); err != nil {
		return nil, err
	}
	for i := range e.m.Objects {
		d, err := os.ReadFile(filepath.Join(src, "models", "bench", e.m.Path(i)))
		if err != nil {
			return nil, err
		}
		e.data = append(e.data, d)
	}
	// Touch the target's memory once: the VM faults host memory in on first use, which
	// would otherwise penalise whichever contender runs first.
	if _, err := e.tmpfsWrite(1); err != nil {
		return nil, err
	}
	return e, nil
}

// startEmulator runs the emulator as a process serving a generated model of size bytes from
// files under src (src/models/bench/…), and returns its endpoint.
func (e *benchEnv) startEmulator(src string, size int64) (string, error) {
	p, err := ossemu.StartProcess(context.Background(), "--region", testRegion,
		"--access-key-id", testAK, "--access-key-secret", testSecret, "--profile", benchProfile(),
		"--generate", "models/bench/="+strconv.FormatInt(size, 10), "--generate-dir", src)
	if err != nil {
		return "", err
	}
	e.cleanup = append(e.cleanup, func() { _ = p.Stop() })
	return p.Endpoint, nil
}

// tmpfs returns a directory on a tmpfs of its own (root) or under /dev/shm.
func (e *benchEnv) tmpfs(name string, size int64, opts string) (string, error) {
	dir, err := os.MkdirTemp("", "modelcast-bench-"+name+"-")
	if err != nil {
		return "", err
	}
	e.cleanup = append(e.cleanup, func() { _ = os.RemoveAll(dir) })
	if os.Geteuid() == 0 {
		data := "size=" + strconv.FormatInt(size, 10)
		if opts != "" {
			data += "," + opts
		}
		if err := unix.Mount("tmpfs", dir, "tmpfs", 0, data); err != nil {
			return "", fmt.Errorf("mount tmpfs on %s: %w", dir, err)
		}
		e.cleanup = append(e.cleanup, func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
		return dir, nil
	}
	return os.MkdirTemp("/dev/shm", "modelcast-bench-"+name+"-")
}

// target returns a fresh empty directory on the target tmpfs.
func (e *benchEnv) target() (string, error) { return os.MkdirTemp(e.dst, "t-") }

// tmpfsWrite writes every object's bytes from memory into new files, with the given number
// of threads, and returns how long the writes took.
func (e *benchEnv) tmpfsWrite(threads int) (time.Duration, error) {
	dir, err := e.target()
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	start := time.Now()
	var g errgroup.Group
	g.SetLimit(threads)
	for i := range e.data {
		g.Go(func() error {
			p := filepath.Join(dir, fmt.Sprintf("%d", i))
			f, err := os.Create(p)
			if err != nil {
				return err
			}
			for d := e.data[i]; len(d) > 0; {
				n, err := f.Write(d[:min(len(d), 4<<20)])
				if err != nil {
					f.Close()
					return err
				}
				d = d[n:]
			}
			return f.Close()
		})
	}
	err = g.Wait()
	return time.Since(start), err
}

// benchProfile is the emulator's profile for the download benchmarks.
func benchProfile() string {
	if p := os.Getenv("MODELCAST_BENCH_PROFILE"); p != "" {
		return p
	}
	return ossemu.LoopbackProfile
}

type contender struct {
	name string
	run  func(e *benchEnv, dir string) error
}

var contenders = []contender{
	{"modelcast", func(e *benchEnv, dir string) error {
		return e.client.Download(context.Background(), e.m, dir, ossclient.DownloadOptions{})
	}},
	{"sdk-downloader", func(e *benchEnv, dir string) error {
		return sdkDownload(e, dir, sdkObjectsAtOnce, sdkParallel, sdkPartSize)
	}},
	{"network-only", func(e *benchEnv, _ string) error {
		type rng struct {
			key      string
			off, end int64
		}
		var ranges []rng
		for _, o := range e.m.Objects {
			for off := int64(0); off < o.Size; off += ossclient.DefaultPartSize {
				ranges = append(ranges, rng{o.Key, off, min(off+ossclient.DefaultPartSize, o.Size) - 1})
			}
		}
		var g errgroup.Group
		g.SetLimit(64)
		for _, r := range ranges {
			g.Go(func() error {
				res, err := e.client.SDK().GetObject(context.Background(), &oss.GetObjectRequest{
					Bucket: oss.Ptr(e.m.Bucket), Key: oss.Ptr(r.key), Range: oss.Ptr(fmt.Sprintf("bytes=%d-%d", r.off, r.end)),
				})
				if err != nil {
					return err
				}
				defer res.Body.Close()
				buf := make([]byte, 256<<10)
				for {
					if _, err := io.ReadFull(res.Body, buf); err != nil {
						if err == io.EOF || err == io.ErrUnexpectedEOF {
							return nil
						}
						return err
					}
				}
			})
		}
		return g.Wait()
	}},
	{"sequential-get", func(e *benchEnv, dir string) error {
		for i, o := range e.m.Objects {
			p := filepath.Join(dir, fmt.Sprintf("%d", i))
			if _, err := e.client.SDK().GetObjectToFile(context.Background(), &oss.GetObjectRequest{Bucket: oss.Ptr(e.m.Bucket), Key: oss.Ptr(o.Key)}, p); err != nil {
				return err
			}
		}
		return nil
	}},
}

func BenchmarkDownload(b *testing.B) {
	e := getBenchEnv(b)
	rounds := 3
	if v, err := strconv.Atoi(os.Getenv("MODELCAST_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	rates := map[string][]float64{}
	ratio := map[string][]float64{}
	for range b.N {
		for r := range rounds {
			// Every figure is the better of two back-to-back runs: this VM gives freed memory
			// back to its host, and whoever touches it first pays for faulting it in again
			// (docs/design.md, the numbers it rests on); the second run finds it resident.
			round := map[string]float64{}
			for _, c := range append([]contender{{"tmpfs-write", nil}}, contenders...) {
				if c.name == "sequential-get" && benchProfile() != ossemu.LoopbackProfile {
					continue
				}
				best := time.Duration(0)
				for i := range 2 {
					var d time.Duration
					var err error
					if c.run == nil {
						// The machine's rate, not a method's: one writer thread, then two.
						d, err = e.tmpfsWrite(i + 1)
					} else {
						d, err = e.timeContender(c.run)
					}
					if err != nil {
						b.Fatalf("%s: %v", c.name, err)
					}
					if best == 0 || d < best {
						best = d
					}
				}
				round[c.name] = float64(e.m.Size()) / best.Seconds() / 1e9
			}
			b.Logf("round %d: %v", r+1, round)
			for k, v := range round {
				rates[k] = append(rates[k], v)
			}
			ratio["modelcast/tmpfs-write"] = append(ratio["modelcast/tmpfs-write"], round["modelcast"]/round["tmpfs-write"])
			ratio["modelcast/sdk-downloader"] = append(ratio["modelcast/sdk-downloader"], round["modelcast"]/round["sdk-downloader"])
			if seq, ok := round["sequential-get"]; ok {
				ratio["modelcast/sequential-get"] = append(ratio["modelcast/sequential-get"], round["modelcast"]/seq)
			}
			ratio["modelcast/network-only"] = append(ratio["modelcast/network-only"], round["modelcast"]/round["network-only"])
		}
	}
	for k, v := range rates {
		b.ReportMetric(median(v), k+"-GB/s")
	}
	for k, v := range ratio {
		b.ReportMetric(median(v), k)
	}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// timeContender runs one download into a fresh directory and returns how long it took.
func (e *benchEnv) timeContender(run func(*benchEnv, string) error) (time.Duration, error) {
	dir, err := e.target()
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	start := time.Now()
	err = run(e, dir)
	return time.Since(start), err
}

// BenchmarkDownloadPartSize sweeps Client.Download's part size (DefaultPartSize's evidence).
func BenchmarkDownloadPartSize(b *testing.B) {
	e := getBenchEnv(b)
	for _, ps := range []int64{2 << 20, 4 << 20, 8 << 20, 16 << 20, 32 << 20} {
		b.Run(fmt.Sprintf("part=%dMiB", ps>>20), func(b *testing.B) {
			runContender(b, e, func(e *benchEnv, dir string) error {
				return e.client.Download(context.Background(), e.m, dir, ossclient.DownloadOptions{PartSize: ps})
			})
		})
	}
}

func runContender(b *testing.B, e *benchEnv, run func(*benchEnv, string) error) {
	b.SetBytes(e.m.Size())
	var total time.Duration
	for range b.N {
		d, err := e.timeContender(run)
		if err != nil {
			b.Fatal(err)
		}
		total += d
	}
	b.ReportMetric(float64(e.m.Size())*float64(b.N)/total.Seconds()/1e9, "GB/s")
}

// sdkDownload fetches the model with the SDK's Downloader, objects at a time.
func sdkDownload(e *benchEnv, dir string, objects, parallel int, partSize int64) error {
	d := e.client.SDK().NewDownloader(func(o *oss.DownloaderOptions) {
		o.ParallelNum, o.PartSize, o.UseTempFile = parallel, partSize, false
	})
	var g errgroup.Group
	g.SetLimit(objects)
	for i, o := range e.m.Objects {
		g.Go(func() error {
			p := filepath.Join(dir, fmt.Sprintf("%d", i))
			_, err := d.DownloadFile(context.Background(), &oss.GetObjectRequest{Bucket: oss.Ptr(e.m.Bucket), Key: oss.Ptr(o.Key)}, p)
			return err
		})
	}
	return g.Wait()
}

// BenchmarkSDKDownloaderTuning is the sweep behind sdkParallel, sdkPartSize and
// sdkObjectsAtOnce: the SDK's downloader at its best, so the comparison is fair.
func BenchmarkSDKDownloaderTuning(b *testing.B) {
	e := getBenchEnv(b)
	for _, objects := range []int{1, 2, 4} {
		for _, parallel := range []int{8, 16, 32, 64} {
			for _, ps := range []int64{8 << 20, 16 << 20, 32 << 20} {
				b.Run(fmt.Sprintf("objects=%d/parallel=%d/part=%dMiB", objects, parallel, ps>>20), func(b *testing.B) {
					runContender(b, e, func(e *benchEnv, dir string) error {
						return sdkDownload(e, dir, objects, parallel, ps)
					})
				})
			}
		}
	}
}
