// Package chaintest runs model broadcasting end to end: node agents (csi-plugin agent: the
// node's cache, chain and data plane) as separate OS processes on distinct loopback addresses,
// a real redis-server, and the OSS emulator.
package chaintest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/modelcast/modelcast/pkg/agent"
	"github.com/modelcast/modelcast/pkg/config"
	"github.com/modelcast/modelcast/test/agenttest"
	"github.com/modelcast/modelcast/test/freeport"
	"github.com/modelcast/modelcast/test/ossemu"
	"github.com/modelcast/modelcast/test/promtest"
	"github.com/modelcast/modelcast/test/redistest"
)

const (
	region = "cn-test"
	ak     = "LTAI5tChainE2EKey"
	sk     = "chain-e2e-secret"
	tenant = "team"
)

// pluginBinary builds csi-plugin once for the package, with the agent's test hooks.
func pluginBinary(t *testing.T) string {
	t.Helper()
	bin, err := agenttest.BuildPlugin("modelcast_testhooks")
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// world is a Redis, an emulator with the model oss://models/qwen/, and the agents' settings.
type world struct {
	t       *testing.T
	emu     *ossemu.Server
	redis   *redistest.Server
	port    int // every agent's bind port, each on its own loopback address
	files   map[string][]byte
	size    int64
	dbUser  string
	dbPass  string
	dbTLS   config.DB // broadcast.db's TLS keys (tls, caFile, certFile, keyFile) for agents started next
	headCon int
}

func newWorld(t *testing.T, size int64, ropts redistest.Options) *world {
	t.Helper()
	port, err := freeport.Get()
	if err != nil {
		t.Fatal(err)
	}
	w := &world{
		t:       t,
		emu:     ossemu.Start(t, ossemu.Options{Region: region, Credentials: []ossemu.Credential{{AccessKeyID: ak, AccessKeySecret: sk}}}),
		redis:   redistest.Start(t, ropts),
		port:    port,
		dbUser:  ropts.Username,
		dbPass:  ropts.Password,
		headCon: 4,
	}
	if w.files, w.size, err = w.emu.GenerateModelFiles("models", "qwen/", ossemu.ModelSpec{Size: size, Seed: 9, Dir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	return w
}

// node is one node agent process.
type node struct {
	*agenttest.Proc
	cacheRoot string
	stderr    *agenttest.Log
}

type agentOpt struct {
	dbPass    string // overrides the world's
	corrupt   int    // test hook chunk, -1 none
	noRedis   bool
	tmpfs     bool // the cache on a tmpfs of its own (root only)
	verbosity int  // klog -v (at least 2)
}

// agentConfig is the configuration of an agent whose directory is dir.
func (w *world) agentConfig(dir string, o agentOpt) config.Config {
	db, err := agenttest.RedisDB(w.redis.Addr())
	if err != nil {
		w.t.Fatal(err)
	}
	db.Username, db.Password = w.dbUser, w.dbPass
	if o.dbPass != "" {
		db.Password = o.dbPass
	}
	if o.noRedis {
		db.Host = ""
	}
	db.TLS, db.CAFile, db.CertFile, db.KeyFile = w.dbTLS.TLS, w.dbTLS.CAFile, w.dbTLS.CertFile, w.dbTLS.KeyFile
	return config.Config{
		ExpireTimeSec: 600,
		Prefetch:      config.Prefetch{VCPUs: 2, Workers: 4},
		Broadcast:     config.Broadcast{EnableBroadcast: true, Tenant: tenant, HeadConcurrency: w.headCon, DB: db},
		BindPort:      w.port,
		Cache:         config.Cache{Root: filepath.Join(dir, "cache"), Tmpfs: agenttest.Ptr(o.tmpfs), TmpfsSize: "256m"},
	}
}

// start runs agent i (address 127.0.0.<10+i>) staging the model.
func (w *world) start(i int, o agentOpt) *node {
	t := w.t
	t.Helper()
	name := fmt.Sprintf("node-%d", i)
	ip := fmt.Sprintf("127.0.0.%d", 10+i)
	dir := t.TempDir()
	cfgPath, err := agenttest.WriteConfig(dir, w.agentConfig(dir, o))
	if err != nil {
		t.Fatal(err)
	}
	flags := []string{"--verify", "--interval", "100ms", "--http-endpoint", ip + ":0", "-v", strconv.Itoa(max(2, o.verbosity))}
	if o.corrupt >= 0 {
		flags = append(flags, "--test-corrupt-chunk", strconv.Itoa(o.corrupt))
	}
	a := &node{cacheRoot: filepath.Join(dir, "cache"), stderr: &agenttest.Log{}}
	a.Proc, err = agenttest.Start(agenttest.Spec{Bin: pluginBinary(t), Config: cfgPath, NodeID: name, NodeIP: ip, Flags: flags,
		Model: "oss://models/qwen/", Env: agenttest.OSSEnv(w.emu.Endpoint(), region, ak, sk), Stderr: a.stderr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Stop(10 * time.Second)
		if t.Failed() {
			t.Logf("%s stderr (last 3 KB):\n%s", name, a.stderr.Tail(3000))
		}
	})
	return a
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// waitFor waits until an event satisfies ok (or the deadline), and returns it; an error line
// or the agent's exit first fails the test.
func (a *node) waitFor(t *testing.T, what string, timeout time.Duration, ok func(agent.Event) bool) agent.Event {
	t.Helper()
	e, err := a.WaitFor(ok, timeout)
	if err != nil {
		t.Fatalf("%s: no %s: %v\n%s", a.Name, what, err, a.stderr.Tail(3000))
	}
	return e
}

func (a *node) ready(t *testing.T) agent.Event {
	return a.waitFor(t, "ready", 2*time.Minute, agenttest.IsReady)
}

// metrics scrapes the agent's /metrics.
func (a *node) metrics(t *testing.T) *promtest.Samples {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	s, err := a.Metrics(ctx)
	if err != nil {
		t.Fatalf("%s: %v\n%s", a.Name, err, a.stderr.Tail(3000))
	}
	return s
}

// checkModel reads the agent's staged model and compares every file with the source.
func (w *world) checkModel(t *testing.T, name string, e agent.Event) {
	t.Helper()
	if !e.Verified {
		t.Errorf("%s: ready without its end-to-end CRC-64 check", name)
	}
	for rel, want := range w.files {
		got, err := os.ReadFile(filepath.Join(e.Dir, rel))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %s differs (%v)", name, rel, err)
		}
	}
}
