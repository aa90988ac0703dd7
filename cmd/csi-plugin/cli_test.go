package main

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const loggingHeading = "logging flags (klog):"

// TestCommandLine runs the built binary: -h shows a command's own flags, then klog's (all of
// them for the servers, -v and -vmodule for the tools) under their own heading, on stdout with
// exit status 0; a command line a command cannot run exits 2, saying what is wrong (naming the
// flag or the argument) and then the usage, before anything starts.
func TestCommandLine(t *testing.T) {
	bin := buildPlugin(t)
	var env []string
	for _, kv := range os.Environ() {
		switch strings.SplitN(kv, "=", 2)[0] {
		case "NODE_NAME", "NODE_IP", "KUBERNETES_SERVICE_HOST":
		default:
			env = append(env, kv)
		}
	}
	dir := t.TempDir()
	run := func(t *testing.T, args ...string) (stdout, stderr string, status int) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env, cmd.Dir = env, dir
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		var exit *exec.ExitError
		switch {
		case err == nil:
		case errors.As(err, &exit):
			status = exit.ExitCode()
		default:
			t.Fatal(err)
		}
		return out.String(), errOut.String(), status
	}
	var klogNames []string
	klogFlags().VisitAll(func(f *flag.Flag) { klogNames = append(klogNames, f.Name) })

	t.Run("help", func(t *testing.T) {
		for _, tc := range []struct {
			args     []string
			usage    string   // the usage line
			own      []string // the command's flags, in order
			logging  []string // klog's
			defaults []string // in the own flags' help
		}{
			{
				args:    []string{"fetch", "-h"},
				usage:   "usage: csi-plugin fetch [flags] oss://bucket/prefix/ DIR",
				own:     []string{"endpoint", "part-size", "path-style", "region", "sign", "vcpus", "workers"},
				logging: []string{"v", "vmodule"},
			},
			{
				args:    []string{"status", "--help"},
				usage:   "usage: csi-plugin status [flags]",
				own:     []string{"config", "interval", "o", "redis", "tenant", "watch"},
				logging: []string{"v", "vmodule"},
			},
			{
				args:    []string{"sum", "-help"},
				usage:   "usage: csi-plugin sum [flags] DIR",
				logging: []string{"v", "vmodule"},
			},
			{
				// A flag set before -h does not show as its default.
				args:  []string{"node", "--endpoint", "unix:///elsewhere.sock", "-h"},
				usage: "usage: csi-plugin node [flags]",
				own: []string{"authorize-mounts", "config", "driver-name", "endpoint", "http-endpoint", "kubeconfig", "kubelet-csi-endpoint",
					"kubelet-registration-dir", "node-id", "node-ip", "progress-every", "publish-wait"},
				logging:  klogNames,
				defaults: []string{`(default "unix:///csi/csi.sock")`, `(default ":19899")`, `(default 30s)`},
			},
			{
				args:    []string{"controller", "-h"},
				usage:   "usage: csi-plugin controller [flags]",
				own:     []string{"config", "driver-name", "endpoint", "http-endpoint", "kubeconfig", "leader-election-namespace"},
				logging: klogNames,
			},
		} {
			t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
				stdout, stderr, status := run(t, tc.args...)
				if status != 0 || stderr != "" {
					t.Errorf("exit status %d, stderr %q; want 0 and nothing (the usage on stdout)", status, stderr)
				}
				if !strings.HasPrefix(stdout, tc.usage+"\n") {
					t.Errorf("the usage does not start with %q:\n%s", tc.usage, stdout)
				}
				before, after, ok := strings.Cut(stdout, "\n"+loggingHeading+"\n")
				if !ok {
					t.Fatalf("no %q heading:\n%s", loggingHeading, stdout)
				}
				if got := flagNames(before); !slices.Equal(got, tc.own) {
					t.Errorf("the command's own flags: %v; want %v\n%s", got, tc.own, stdout)
				}
				if len(tc.own) > 0 && !strings.Contains(before, "\nflags:\n") {
					t.Errorf("no flags: heading before the command's flags:\n%s", stdout)
				}
				if got := flagNames(after); !slices.Equal(got, tc.logging) {
					t.Errorf("the logging flags: %v; want %v\n%s", got, tc.logging, stdout)
				}
				for _, d := range tc.defaults {
					if !strings.Contains(before, d) {
						t.Errorf("the flags' help lacks %s:\n%s", d, before)
					}
				}
			})
		}
	})

	t.Run("main usage", func(t *testing.T) {
		stdout, _, status := run(t, "help")
		if status != 0 || !strings.Contains(stdout, "usage: csi-plugin <command>") {
			t.Errorf("csi-plugin help: exit status %d; want 0 and the usage on stdout:\n%s", status, stdout)
		}
		_, stderr, status := run(t)
		if status != 2 || !strings.Contains(stderr, "csi-plugin: missing command") || !strings.Contains(stderr, "usage: csi-plugin <command>") {
			t.Errorf("csi-plugin alone: exit status %d; want 2, what is missing and the usage on stderr:\n%s", status, stderr)
		}
	})

	// Each exits 2 before it starts anything (no socket, no configuration read, no
	// directory created), saying what is wrong, then the command's usage.
	for _, tc := range []struct {
		name  string
		args  []string
		want  []string // each in what stderr says before the usage
		usage string
	}{
		{"stray argument to node", []string{"node", "--node-id", "n", "extra"}, []string{`csi-plugin node: unexpected argument "extra"`}, "usage: csi-plugin node"},
		{"stray argument to controller", []string{"controller", "extra"}, []string{`csi-plugin controller: unexpected argument "extra"`}, "usage: csi-plugin controller"},
		{"controller with a lease namespace that is not a name", []string{"controller", "--leader-election-namespace", "Kube_System"},
			[]string{`csi-plugin controller: --leader-election-namespace "Kube_System": not a namespace's name`}, "usage: csi-plugin controller"},
		{"flag after an argument", []string{"controller", "extra", "--endpoint", "unix:///x.sock"}, []string{`unexpected argument "extra" (flags go before the arguments)`}, "usage: csi-plugin controller"},
		{"stray argument to fetch", []string{"fetch", "oss://a/b/", "model", "extra"}, []string{`csi-plugin fetch: unexpected argument "extra"`}, "usage: csi-plugin fetch"},
		{"fetch without DIR", []string{"fetch", "oss://a/b/"}, []string{"csi-plugin fetch: missing DIR"}, "usage: csi-plugin fetch"},
		{"fetch of a bad path", []string{"fetch", "oss://Models/qwen/", "model"}, []string{`csi-plugin fetch: `, `bucket name "Models"`}, "usage: csi-plugin fetch"},
		{"stray argument to status", []string{"status", "extra"}, []string{`csi-plugin status: unexpected argument "extra"`}, "usage: csi-plugin status"},
		{"sum without DIR", []string{"sum"}, []string{"csi-plugin sum: missing DIR"}, "usage: csi-plugin sum"},
		{"stray argument to sum", []string{"sum", "a", "b"}, []string{`csi-plugin sum: unexpected argument "b"`}, "usage: csi-plugin sum"},
		{"stray argument to version", []string{"version", "extra"}, []string{`csi-plugin: version: unexpected argument "extra"`}, "usage: csi-plugin <command>"},
		{"unknown flag", []string{"fetch", "--bogus", "oss://a/b/", "model"}, []string{"csi-plugin fetch: flag provided but not defined: -bogus"}, "usage: csi-plugin fetch"},
		{"klog flag a tool does not take", []string{"sum", "--logtostderr=false", "."}, []string{"flag provided but not defined: -logtostderr"}, "usage: csi-plugin sum"},
		{"unparsable value", []string{"node", "--node-id", "n", "--publish-wait", "soon"}, []string{`csi-plugin node: invalid value "soon" for flag -publish-wait`}, "usage: csi-plugin node"},
		{"node without an ID", []string{"node"}, []string{"csi-plugin node: --node-id is empty: set it, or $NODE_NAME"}, "usage: csi-plugin node"},
		{"bad node IP", []string{"node", "--node-id", "n", "--node-ip", "node-1.example"}, []string{`csi-plugin node: --node-ip "node-1.example": not an IP address`}, "usage: csi-plugin node"},
		{"bad endpoint", []string{"controller", "--endpoint", "/csi/csi.sock"}, []string{`csi-plugin controller: --endpoint "/csi/csi.sock": want unix:///path/csi.sock or tcp://host:port`}, "usage: csi-plugin controller"},
		{"node flag on the controller", []string{"controller", "--node-id", "n"}, []string{"csi-plugin controller: flag provided but not defined: -node-id"}, "usage: csi-plugin controller"},
		{"two bad values", []string{"node", "--node-id", "n", "--progress-every", "0s", "--http-endpoint", "19899"}, []string{
			`csi-plugin node: --http-endpoint "19899": want host:port`, "csi-plugin node: --progress-every 0s: must be positive",
		}, "usage: csi-plugin node"},
		{"registration of a tcp endpoint", []string{"node", "--node-id", "n", "--endpoint", "tcp://127.0.0.1:0", "--kubelet-registration-dir", "reg"},
			[]string{"csi-plugin node: --kubelet-registration-dir: --endpoint \"tcp://127.0.0.1:0\" is not a unix socket: set --kubelet-csi-endpoint"}, "usage: csi-plugin node"},
		{"bad fetch values", []string{"fetch", "--vcpus", "0", "--sign", "v3", "oss://a/b/", "model"}, []string{
			`csi-plugin fetch: --sign "v3": want v4 or v1`, "csi-plugin fetch: --vcpus 0: want 1 or more",
		}, "usage: csi-plugin fetch"},
		{"bad status output", []string{"status", "-o", "yaml"}, []string{`csi-plugin status: -o "yaml": want table or json`}, "usage: csi-plugin status"},
		{"bad Redis address", []string{"status", "--redis", "localhost"}, []string{`csi-plugin status: --redis "localhost": want host:port`}, "usage: csi-plugin status"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, stderr, status := run(t, tc.args...)
			if status != 2 {
				t.Errorf("exit status %d; want 2\nstderr:\n%s", status, stderr)
			}
			if stdout != "" {
				t.Errorf("stdout %q; want nothing", stdout)
			}
			msg, _, ok := strings.Cut(stderr, "\n\n"+tc.usage)
			if !ok {
				t.Errorf("stderr lacks the usage (%q) after the error:\n%s", tc.usage, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("stderr does not say %q before the usage:\n%s", w, stderr)
				}
			}
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			if len(entries) > 0 {
				t.Errorf("a refused command line left %v in its working directory", entries)
			}
		})
	}
}

var flagLine = regexp.MustCompile(`(?m)^  -(\S+)`)

// flagNames are the flags PrintDefaults lists in s, in order.
func flagNames(s string) []string {
	var names []string
	for _, m := range flagLine.FindAllStringSubmatch(s, -1) {
		names = append(names, m[1])
	}
	return names
}
