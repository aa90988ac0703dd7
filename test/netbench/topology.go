// Package netbench measures model broadcasting on one machine turned into many hosts: every
// host is a network namespace with a veth pair to a bridge, its link shaped with tc tbf in both
// directions; the OSS emulator has a namespace of its own with its egress shaped and answers
// like an object store (its object-store profile: 20 ms to the first byte, 50 MB/s per
// connection); Redis listens on the bridge. Node agents (csi-plugin agent: the node's real
// cache, chain and data plane) run one per host; a few hosts may have slower links than the
// others (EnvConfig.Slow). RunHead measures a chain's head alone against a direct fetch on
// loopback, without namespaces. Needs root, iproute2 and redis-server.
//
// NETBENCH_MTU sets the links' MTU (default 9000); NETBENCH_DEBUG=1 prints every agent's
// counters and log after each scenario.
package netbench

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Addresses come from 198.18.0.0/15, the range set aside for benchmarks (RFC 2544): the
// bridge is .0.1, the OSS emulator .0.2, hosts 198.18.1.1 onwards.
const (
	bridgeIP = "198.18.0.1"
	ossIP    = "198.18.0.2"
	netmask  = "/15"
)

// Host is one namespace ("" for the machine's own, loopback).
type Host struct {
	NS   string // network namespace
	IP   string
	Rate string // tc rate of what it sends (a host's link: each way); "" unshaped
	veth string // its veth's name on the bridge side
}

// Topology is the bridge and its hosts. Close (or Cleanup of its prefix) removes everything.
type Topology struct {
	prefix string
	bridge string
	OSS    Host
	Hosts  []Host
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// NewTopology builds one host per element of rates, host i's link shaped to rates[i] (tc rate,
// e.g. "1gbit") each way, and the OSS namespace with its egress shaped to ossRate. Names start
// with prefix.
func NewTopology(prefix string, rates []string, ossRate string) (*Topology, error) {
	Cleanup(prefix)
	t := &Topology{prefix: prefix, bridge: prefix + "br"}
	if err := t.build(rates, ossRate); err != nil {
		_ = t.Close()
		return nil, err
	}
	return t, nil
}

func (t *Topology) build(rates []string, ossRate string) error {
	if err := run("ip", "link", "add", t.bridge, "mtu", mtu(), "type", "bridge"); err != nil {
		return err
	}
	if err := run("ip", "addr", "add", bridgeIP+netmask, "dev", t.bridge); err != nil {
		return err
	}
	if err := run("ip", "link", "set", t.bridge, "up"); err != nil {
		return err
	}
	var err error
	if t.OSS, err = t.host("oss", ossIP, ossRate, ""); err != nil {
		return err
	}
	for i, rate := range rates {
		h, err := t.host(fmt.Sprintf("h%d", i), fmt.Sprintf("198.18.%d.%d", 1+i/250, 1+i%250), rate, rate)
		if err != nil {
			return err
		}
		t.Hosts = append(t.Hosts, h)
	}
	return nil
}

// host makes namespace prefix+name with address ip; up shapes what it sends, down what it
// receives ("" leaves a direction free).
func (t *Topology) host(name, ip, up, down string) (Host, error) {
	h := Host{NS: t.prefix + name, IP: ip, Rate: up, veth: t.prefix + name}
	inner := h.veth + "n"
	steps := [][]string{
		{"ip", "netns", "add", h.NS},
		{"ip", "link", "add", h.veth, "mtu", mtu(), "type", "veth", "peer", "name", inner, "mtu", mtu()},
		{"ip", "link", "set", inner, "netns", h.NS},
		{"ip", "link", "set", h.veth, "master", t.bridge, "up"},
		{"ip", "netns", "exec", h.NS, "ip", "link", "set", "lo", "up"},
		{"ip", "netns", "exec", h.NS, "ip", "addr", "add", ip + netmask, "dev", inner},
		{"ip", "netns", "exec", h.NS, "ip", "link", "set", inner, "up"},
	}
	// tbf: the bucket holds a few full-size (GSO) packets; the queue up to 50 ms at the rate
	// (6 MB at 1 Gbit/s), a deep switch buffer: a sender that fills queues pays for it here.
	if up != "" {
		steps = append(steps, []string{"ip", "netns", "exec", h.NS, "tc", "qdisc", "add", "dev", inner, "root", "tbf", "rate", up, "burst", "256kb", "latency", "50ms"})
	}
	if down != "" {
		steps = append(steps, []string{"tc", "qdisc", "add", "dev", h.veth, "root", "tbf", "rate", down, "burst", "256kb", "latency", "50ms"})
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			return h, err
		}
	}
	return h, nil
}

// Close removes the namespaces (their veths go with them) and the bridge.
func (t *Topology) Close() error {
	var errs []error
	for _, h := range append([]Host{t.OSS}, t.Hosts...) {
		if h.NS != "" {
			if err := run("ip", "netns", "del", h.NS); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := run("ip", "link", "del", t.bridge); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Cleanup removes whatever a run with this prefix left behind (a crash, a kill -9).
func Cleanup(prefix string) {
	if out, err := exec.Command("ip", "netns", "list").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], prefix) {
				_ = run("ip", "netns", "del", f[0])
			}
		}
	}
	if out, err := exec.Command("ip", "-o", "link", "show").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) > 1 {
				name := strings.TrimSuffix(strings.Split(f[1], "@")[0], ":")
				if strings.HasPrefix(name, prefix) {
					_ = run("ip", "link", "del", name)
				}
			}
		}
	}
}

// mtu of every link: jumbo frames, as in a data centre (VPCs carry 8500-9000 bytes); with
// 1500 every byte costs this two-vCPU machine about a quarter more CPU (NETBENCH_MTU overrides).
func mtu() string {
	if m := os.Getenv("NETBENCH_MTU"); m != "" {
		return m
	}
	return "9000"
}
