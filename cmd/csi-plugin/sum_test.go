package main

import (
	"fmt"
	"hash/crc64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSum: csi-plugin sum prints OSS's CRC-64 (hash/crc64 with the ECMA table, as
// x-oss-hash-crc64ecma), the size and the slash path of every regular file, sorted.
func TestSum(t *testing.T) {
	dir := t.TempDir()
	files := map[string][]byte{
		"config.json":                []byte(`{"architectures": ["Qwen3ForCausalLM"]}`),
		"model-00001.safetensors":    make([]byte, 5<<20+3),
		"tokenizer/vocab with space": []byte("a b c"),
		"empty":                      nil,
	}
	for i := range files["model-00001.safetensors"] {
		files["model-00001.safetensors"][i] = byte(i * 7)
	}
	for p, b := range files {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("config.json", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(buildPlugin(t), "sum", dir).Output()
	if err != nil {
		t.Fatal(err)
	}
	table := crc64.MakeTable(crc64.ECMA)
	var want []string
	for _, p := range []string{"config.json", "empty", "model-00001.safetensors", "tokenizer/vocab with space"} {
		want = append(want, fmt.Sprintf("%d %d %s", crc64.Checksum(files[p], table), len(files[p]), p))
	}
	if got := strings.Split(strings.TrimSpace(string(out)), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("csi-plugin sum printed\n%s\nwant\n%s", out, strings.Join(want, "\n"))
	}
	if err := exec.Command(buildPlugin(t), "sum", filepath.Join(dir, "missing")).Run(); err == nil {
		t.Error("sum of a missing directory succeeded")
	}
}
