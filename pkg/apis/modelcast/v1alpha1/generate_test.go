package v1alpha1_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

const (
	repoRoot = "../../../.."
	crdDir   = repoRoot + "/charts/modelcast/crds"
	crdFile  = crdDir + "/modelcast.io_modelcaches.yaml"
)

// TestGeneratedCurrent: the chart's CRDs and zz_generated.deepcopy.go are what controller-gen
// writes from the types now (`make generate`). It runs the generator into a temporary
// directory (hack/generate.sh DIR), through the Go module proxy the first time.
func TestGeneratedCurrent(t *testing.T) {
	out := t.TempDir()
	start := time.Now()
	cmd := exec.Command("bash", repoRoot+"/hack/generate.sh", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("hack/generate.sh: %v\n%s", err, b)
	}
	t.Logf("controller-gen ran in %v", time.Since(start).Round(time.Millisecond))

	generated, err := filepath.Glob(filepath.Join(out, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	committed, err := filepath.Glob(filepath.Join(crdDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	names := func(paths []string) []string {
		var n []string
		for _, p := range paths {
			n = append(n, filepath.Base(p))
		}
		slices.Sort(n)
		return n
	}
	if g, c := names(generated), names(committed); !slices.Equal(g, c) {
		t.Errorf("charts/modelcast/crds holds %v, the generator writes %v: run `make generate`", c, g)
	}
	for _, name := range names(generated) {
		same(t, filepath.Join(out, name), filepath.Join(crdDir, name))
	}
	same(t, filepath.Join(out, "zz_generated.deepcopy.go"), "zz_generated.deepcopy.go")
}

func same(t *testing.T, generated, committed string) {
	t.Helper()
	want, err := os.ReadFile(generated)
	if err != nil {
		t.Fatal(err)
	}
	have, err := os.ReadFile(committed)
	if err != nil {
		t.Fatalf("%v: run `make generate`", err)
	}
	if !bytes.Equal(want, have) {
		t.Errorf("%s is not what controller-gen writes from the types: run `make generate`", committed)
	}
}
