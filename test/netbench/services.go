package netbench

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/modelcast/modelcast/test/freeport"
	"github.com/modelcast/modelcast/test/ossemu"
)

// Binaries are the programs a run needs.
type Binaries struct {
	Plugin, OSSEmu, RedisServer string
}

// Build compiles csi-plugin and ossemu into dir and finds redis-server.
func Build(ctx context.Context, dir string) (Binaries, error) {
	b := Binaries{Plugin: filepath.Join(dir, "csi-plugin"), OSSEmu: filepath.Join(dir, "ossemu")}
	for pkg, out := range map[string]string{
		"github.com/modelcast/modelcast/cmd/csi-plugin":         b.Plugin,
		"github.com/modelcast/modelcast/test/ossemu/cmd/ossemu": b.OSSEmu,
	} {
		if o, err := exec.CommandContext(ctx, "go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
			return b, fmt.Errorf("build %s: %w: %s", pkg, err, o)
		}
	}
	var err error
	if b.RedisServer, err = exec.LookPath("redis-server"); err != nil {
		return b, fmt.Errorf("redis-server not found (hack/ensure-deps.sh installs it): %w", err)
	}
	return b, nil
}

// proc is a child process with its log in a file.
type proc struct {
	cmd  *exec.Cmd
	log  string
	done chan error
}

func start(cmd *exec.Cmd, log string) (*proc, error) {
	f, err := os.Create(log)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = f, f
	// Children die with the harness, whatever kills it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	p := &proc{cmd: cmd, log: log, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait(); f.Close() }()
	return p, nil
}

func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Redis is a redis-server on the bridge.
type Redis struct {
	Addr string
	p    *proc
}

// StartRedis runs redis-server on the bridge address.
func StartRedis(bin, dir string) (*Redis, error) { return startRedis(bin, dir, bridgeIP) }

// startRedis runs redis-server on ip (the bridge's, or loopback).
func startRedis(bin, dir, ip string) (*Redis, error) {
	port, err := freeport.Get()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--bind", ip, "--port", strconv.Itoa(port), "--save", "", "--appendonly", "no", "--dir", dir, "--protected-mode", "no")
	p, err := start(cmd, filepath.Join(dir, "redis.log"))
	if err != nil {
		return nil, err
	}
	r := &Redis{Addr: net.JoinHostPort(ip, strconv.Itoa(port)), p: p}
	if err := p.waitDial(r.Addr, 10*time.Second); err != nil {
		p.stop()
		return nil, fmt.Errorf("redis-server: %w", err)
	}
	return r, nil
}

// Stop ends Redis.
func (r *Redis) Stop() { r.p.stop() }

// waitDial waits until addr accepts connections, the process exits, or timeout.
func (p *proc) waitDial(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case werr := <-p.done:
			p.done <- werr // for stop
			return fmt.Errorf("%s exited (%v) before listening on %s", p.cmd.Path, werr, addr)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// OSS is the emulator in its namespace, serving generated models from files.
type OSS struct {
	Endpoint string
	Profile  string // its --profile
	p        *proc
}

// Credentials the emulator requires and the agents sign with.
const (
	accessKeyID     = "LTAI5tNetBenchKey01"
	accessKeySecret = "netbench-secret"
	region          = "cn-bench"
)

// StartOSS runs the emulator in the OSS namespace with models (prefix → size) under bucket
// "models", their files in dir, answering with the named profile (ossemu.ProfileByName;
// "" is ossemu.ObjectStoreProfile).
func StartOSS(bin string, t *Topology, dir string, models map[string]int64, profile string) (*OSS, error) {
	return startOSS(bin, t.OSS, 9000, dir, models, profile)
}

// startOSS runs the emulator in h's namespace (none when h.NS is ""), listening on h.IP:port.
func startOSS(bin string, h Host, port int, dir string, models map[string]int64, profile string) (*OSS, error) {
	if profile == "" {
		profile = ossemu.ObjectStoreProfile
	}
	addr := net.JoinHostPort(h.IP, strconv.Itoa(port))
	args := []string{"--listen", addr, "--region", region, "--profile", profile,
		"--access-key-id", accessKeyID, "--access-key-secret", accessKeySecret, "--generate-dir", filepath.Join(dir, "models")}
	for prefix, size := range models {
		args = append(args, "--generate", "models/"+prefix+"="+strconv.FormatInt(size, 10))
	}
	cmd := exec.Command(bin, args...)
	if h.NS != "" {
		cmd = exec.Command("ip", append([]string{"netns", "exec", h.NS, bin}, args...)...)
	}
	p, err := start(cmd, filepath.Join(dir, "ossemu.log"))
	if err != nil {
		return nil, err
	}
	o := &OSS{Endpoint: "http://" + addr, Profile: profile, p: p}
	// It listens once it has generated the models.
	if err := p.waitDial(addr, 5*time.Minute); err != nil {
		p.stop()
		log, _ := os.ReadFile(p.log)
		return nil, fmt.Errorf("ossemu: %w: %s", err, log)
	}
	return o, nil
}

// Stop ends the emulator.
func (o *OSS) Stop() { o.p.stop() }

// Served reads how many object bytes the emulator has sent since the last reset.
func (o *OSS) Served() (int64, error) {
	res, err := http.Get(o.Endpoint + "/-/stats")
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	var st ossemu.Stats
	if err := json.NewDecoder(res.Body).Decode(&st); err != nil {
		return 0, err
	}
	return st.BytesServed, nil
}

// Reset zeroes the emulator's counters.
func (o *OSS) Reset() error {
	res, err := http.Post(o.Endpoint+"/-/reset-stats", "", strings.NewReader(""))
	if err != nil {
		return err
	}
	res.Body.Close()
	return nil
}
