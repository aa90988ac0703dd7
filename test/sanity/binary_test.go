package sanity

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/modelcast/modelcast/pkg/driver"
	"github.com/modelcast/modelcast/test/freeport"
	"github.com/modelcast/modelcast/test/ossemu"
)

// suiteDescription is what csi-sanity passes to RunSpecs; ginkgo matches -ginkgo.skip against
// it, a space and the spec's text.
const suiteDescription = "CSI Driver Test Suite"

// writerSpecs are the csi-sanity specs that fail only because they ask for SINGLE_NODE_WRITER,
// which modelcast refuses with InvalidArgument (its volumes are read-only by design). Each is
// a spec's full text (its containers' texts and its own, joined by spaces), skipped by an
// anchored regular expression; the test fails if they do not skip exactly these specs.
// Every one of them fails at the CreateVolume it starts with (csi-test v5.6.0's
// controller.go:387, 403, 416, 442, 464, 634, 670, 691, node.go:192 (its
// createVolumeWithCapability) and node.go:97 (the node lifecycle specs), with "rpc error: code = InvalidArgument desc = invalid
// request: access mode SINGLE_NODE_WRITER is not supported: modelcast volumes are read-only,
// use accessModes [ReadOnlyMany]". TestSanity runs them all with the reader mode instead.
var writerSpecs = []string{
	"Controller Service [Controller Server] CreateVolume should return appropriate values SingleNodeWriter NoCapacity",
	"Controller Service [Controller Server] CreateVolume should return appropriate values SingleNodeWriter WithCapacity 1Gi",
	"Controller Service [Controller Server] CreateVolume should not fail when requesting to create a volume with already existing name and same capacity",
	"Controller Service [Controller Server] CreateVolume should fail when requesting to create a volume with already existing name and different capacity",
	"Controller Service [Controller Server] CreateVolume should not fail when creating volume with maximum-length name",
	"Controller Service [Controller Server] DeleteVolume should return appropriate values (no optional values added)",
	"Controller Service [Controller Server] ValidateVolumeCapabilities should fail when no volume capabilities are provided",
	"Controller Service [Controller Server] ValidateVolumeCapabilities should return appropriate values (no optional values added)",
	"Node Service NodeUnpublishVolume should remove target path",
	"Node Service should work",
	"Node Service should be idempotent",
}

// TestSanityBinary runs the kubernetes-csi csi-sanity binary, built from the csi-test module in
// go.mod, against real `csi-plugin node` and `csi-plugin controller` processes on unix sockets,
// with the model in the OSS emulator and credentials from csi-sanity's secrets file. Unlike
// TestSanity, nothing rewrites the suite's requests: the specs that ask for a writer access
// mode are skipped by name instead.
func TestSanityBinary(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestSanityBinary needs root (the node plugin mounts a tmpfs and csi-sanity's volumes are bind mounts): run it as root")
	}
	dir := t.TempDir()
	// Cleanups run last first: the plugins stop, then leftover mounts go, then TempDir.
	t.Cleanup(func() { unmountUnder(t, dir) })

	bins := buildBinaries(t, filepath.Join(dir, "bin"))

	srv := ossemu.Start(t, ossemu.Options{Region: region, Credentials: []ossemu.Credential{{AccessKeyID: ak, AccessKeySecret: sk}}})
	if _, err := srv.GenerateModel("models", "sanity/qwen/", ossemu.ModelSpec{Size: 4 << 20, Seed: 5}); err != nil {
		t.Fatal(err)
	}

	cfgPath := filepath.Join(dir, "config.json")
	cfg := fmt.Sprintf(`{"bindPort": %d, "cache": {"root": %q, "tmpfsSize": "256m"}}`, freeport.Must(t), filepath.Join(dir, "cache"))
	writeFile(t, cfgPath, cfg)
	env := pluginEnv(srv.Endpoint())
	nodeSock, ctrlSock := filepath.Join(dir, "node.sock"), filepath.Join(dir, "controller.sock")
	startPlugin(t, bins.plugin, env, dir, "node", "--config", cfgPath, "--endpoint", "unix://"+nodeSock,
		"--node-id", "sanity-node", "--node-ip", "127.0.0.1", "--http-endpoint", "")
	startPlugin(t, bins.plugin, env, dir, "controller", "--config", cfgPath, "--endpoint", "unix://"+ctrlSock, "--http-endpoint", "")

	secrets := filepath.Join(dir, "secrets.yaml")
	creds := fmt.Sprintf("{akId: %s, akSecret: %s}", ak, sk)
	writeFile(t, secrets, fmt.Sprintf("CreateVolumeSecret: %s\nNodePublishVolumeSecret: %s\nControllerValidateVolumeCapabilitiesSecret: %s\n", creds, creds, creds))
	params := filepath.Join(dir, "parameters.yaml")
	writeFile(t, params, fmt.Sprintf("%s: oss://models/sanity/qwen/\n", driver.AttrOSSPath))
	report := filepath.Join(dir, "report.json")
	args := []string{
		"--csi.endpoint", "unix://" + nodeSock,
		"--csi.controllerendpoint", "unix://" + ctrlSock,
		"--csi.mountdir", filepath.Join(dir, "target"),
		"--csi.stagingdir", filepath.Join(dir, "staging"),
		"--csi.secrets", secrets,
		"--csi.testvolumeparameters", params,
		"-ginkgo.no-color",
		"-ginkgo.json-report", report,
	}
	if skip := skipRegexp(writerSpecs); skip != "" {
		args = append(args, "-ginkgo.skip", skip)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute) // it takes well under a second
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.sanity, args...)
	cmd.Dir = dir
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	out, runErr := cmd.CombinedOutput()
	t.Logf("csi-sanity ran for %v (exit: %v)", time.Since(start).Round(time.Millisecond), runErr)
	if ctx.Err() != nil {
		t.Fatalf("csi-sanity did not finish in time:\n%s", out)
	}

	sum, err := parseSummary(string(out))
	if err != nil {
		t.Fatalf("%v; csi-sanity's output:\n%s", err, out)
	}
	t.Logf("csi-sanity: ran %d of %d specs: %d passed, %d failed, %d pending, %d skipped (writerSpecs names %d)",
		sum.ran, sum.total, sum.passed, sum.failed, sum.pending, sum.skipped, len(writerSpecs))
	if sum.failed > 0 || runErr != nil {
		t.Errorf("csi-sanity: %d specs failed (exit: %v); its output:\n%s", sum.failed, runErr, out)
	}
	checkSkipped(t, report)
}

type binaries struct{ plugin, sanity string }

// buildBinaries builds csi-plugin and csi-sanity (from the csi-test module in go.mod) into dir.
func buildBinaries(t *testing.T, dir string) binaries {
	t.Helper()
	b := binaries{plugin: filepath.Join(dir, "csi-plugin"), sanity: filepath.Join(dir, "csi-sanity")}
	pkgs := map[string]string{
		b.plugin: "github.com/modelcast/modelcast/cmd/csi-plugin",
		b.sanity: "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity",
	}
	var wg sync.WaitGroup
	errs := make([]error, 0, len(pkgs))
	var mu sync.Mutex
	start := time.Now()
	for bin, pkg := range pkgs {
		wg.Go(func() {
			if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("go build %s: %w\n%s", pkg, err, out))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	t.Logf("built csi-plugin and csi-sanity in %v", time.Since(start).Round(time.Millisecond))
	return b
}

// pluginEnv is this process's environment without anything that would configure the plugin
// behind the test's back (OSS credentials, a Kubernetes API, modelcast's overrides), with the
// emulator as the OSS endpoint.
func pluginEnv(endpoint string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "OSS_") || strings.HasPrefix(name, "ALIBABA_CLOUD_") || strings.HasPrefix(name, "MODELCAST_") ||
			strings.HasPrefix(name, "CONNECTOR_") || name == "KUBERNETES_SERVICE_HOST" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "OSS_ENDPOINT="+endpoint, "OSS_REGION="+region)
}

// startPlugin starts `csi-plugin <mode> args…`, waits for its socket (the value of --endpoint)
// and stops it at cleanup: SIGTERM, then SIGKILL if it has not exited 30 s later. Its stderr
// goes to <dir>/<mode>.log, shown if it fails.
func startPlugin(t *testing.T, bin string, env []string, dir, mode string, args ...string) {
	t.Helper()
	sock := strings.TrimPrefix(args[slices.Index(args, "--endpoint")+1], "unix://")
	logPath := filepath.Join(dir, mode+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close() // the child has its own descriptor
	cmd := exec.Command(bin, append([]string{mode}, args...)...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(exited) }()
	stderr := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM) // an error only if it already exited
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Errorf("csi-plugin %s did not stop on SIGTERM; killed", mode)
		}
		if waitErr != nil {
			t.Errorf("csi-plugin %s: %v", mode, waitErr)
		}
		if t.Failed() {
			t.Logf("csi-plugin %s's log:\n%s", mode, stderr())
		}
		_ = os.Remove(sock) // the plugin removes it; this is for a killed one
	})

	deadline := time.Now().Add(30 * time.Second)
	for {
		if fi, err := os.Lstat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return
		}
		select {
		case <-exited:
			t.Fatalf("csi-plugin %s exited before serving: %v\n%s", mode, waitErr, stderr())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("csi-plugin %s has no socket at %s after 30 s\n%s", mode, sock, stderr())
		}
		time.Sleep(20 * time.Millisecond) // polling with a deadline
	}
}

// skipRegexp anchors each spec's full text as ginkgo matches it (the suite's description, a
// space, the spec's text) and joins them with |; "" for none.
func skipRegexp(specs []string) string {
	res := make([]string, len(specs))
	for i, s := range specs {
		res[i] = "^" + regexp.QuoteMeta(suiteDescription+" "+s) + "$"
	}
	return strings.Join(res, "|")
}

type summary struct{ ran, total, passed, failed, pending, skipped int }

// summaryRE matches ginkgo's final summary, e.g.
//
//	Ran 60 of 95 Specs in 12.345 seconds
//	SUCCESS! -- 60 Passed | 0 Failed | 0 Pending | 35 Skipped
var summaryRE = regexp.MustCompile(`Ran (\d+) of (\d+) Specs in [0-9.]+ seconds\s*\n(?:SUCCESS!|FAIL!)[^\n]*?-- (\d+) Passed \| (\d+) Failed \| (?:\d+ Flaked \| )?(\d+) Pending \| (\d+) Skipped`)

func parseSummary(out string) (summary, error) {
	m := summaryRE.FindAllStringSubmatch(out, -1)
	if len(m) == 0 {
		return summary{}, errors.New("no ginkgo summary (\"Ran N of M Specs … X Passed | Y Failed | Z Pending | W Skipped\") in csi-sanity's output")
	}
	var n [6]int
	for i, s := range m[len(m)-1][1:] {
		n[i], _ = strconv.Atoi(s) // \d+
	}
	return summary{ran: n[0], total: n[1], passed: n[2], failed: n[3], pending: n[4], skipped: n[5]}, nil
}

// checkSkipped reads ginkgo's JSON report and checks that the specs skipped by -ginkgo.skip
// (skipped without a message; a spec that skips itself says why) are exactly writerSpecs: a
// renamed or removed spec cannot silently drop out of the list, nor a pattern skip more.
func checkSkipped(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("csi-sanity's JSON report: %v", err)
	}
	var reports []struct {
		SpecReports []struct {
			ContainerHierarchyTexts []string
			LeafNodeType            string
			LeafNodeText            string
			State                   string
			Failure                 struct{ Message string }
		}
	}
	if err := json.Unmarshal(data, &reports); err != nil {
		t.Fatalf("csi-sanity's JSON report %s: %v", path, err)
	}
	skipped := map[string]bool{}
	for _, r := range reports {
		for _, s := range r.SpecReports {
			if s.LeafNodeType == "It" && s.State == "skipped" && s.Failure.Message == "" {
				skipped[strings.Join(append(slices.Clone(s.ContainerHierarchyTexts), s.LeafNodeText), " ")] = true
			}
		}
	}
	var missing, extra []string // named but not skipped (renamed, removed); skipped but not named
	for _, name := range writerSpecs {
		if !skipped[name] {
			missing = append(missing, name)
		}
	}
	for name := range skipped {
		if !slices.Contains(writerSpecs, name) {
			extra = append(extra, name)
		}
	}
	if len(skipped) != len(writerSpecs) || len(missing)+len(extra) > 0 {
		slices.Sort(extra)
		t.Errorf("-ginkgo.skip skipped %d specs, writerSpecs names %d\nnamed, not skipped (no such spec):\n  %s\nskipped, not named:\n  %s",
			len(skipped), len(writerSpecs), strings.Join(missing, "\n  "), strings.Join(extra, "\n  "))
	}
}

// unmountUnder detaches every mount at or below dir, deepest first: what a failed run left
// (the cache tmpfs of a killed plugin, csi-sanity's bind mounts).
func unmountUnder(t *testing.T, dir string) {
	t.Helper()
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		t.Errorf("mountinfo: %v", err)
		return
	}
	slices.SortFunc(mounts, func(a, b *mountinfo.Info) int { return len(b.Mountpoint) - len(a.Mountpoint) })
	for _, m := range mounts {
		if err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			t.Errorf("unmount %s: %v", m.Mountpoint, err)
		}
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
