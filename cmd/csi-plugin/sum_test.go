package main

import (
	"fmt"
	"hash/crc64"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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

// TestSumEscapesNames: a name that could break a line, move the terminal's cursor or read as
// another name is printed quoted and escaped (strconv.Quote); plain names, spaces and
// non-ASCII letters included, are printed as they are.
func TestSumEscapesNames(t *testing.T) {
	dir := t.TempDir()
	names := map[string]string{ // on disk → printed
		"plain 模型.json":        "plain 模型.json",
		"new\nline 0 0 forged": `"new\nline 0 0 forged"`,
		"c1\u0085nel":          `"c1\u0085nel"`,
		"c1\u009b31mred":       `"c1\u009b31mred"`,
		"tab\there":            `"tab\there"`,
		"bidi\u202egnp.exe":    `"bidi\u202egnp.exe"`,
		"isolate\u2066x\u2069": `"isolate\u2066x\u2069"`,
		"mark\u200fx":          `"mark\u200fx"`,
		"\ufeffbom.json":       `"\ufeffbom.json"`,
		"nbsp\u00a0x":          `"nbsp\u00a0x"`,
		"bad\xffutf8":          `"bad\xffutf8"`,
		`"quoted"`:             `"\"quoted\""`,
	}
	for name := range names {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command(buildPlugin(t), "sum", dir).Output()
	if err != nil {
		t.Fatal(err)
	}
	table := crc64.MakeTable(crc64.ECMA)
	var want []string
	for _, name := range slices.Sorted(maps.Keys(names)) { // sum walks in lexical order
		want = append(want, fmt.Sprintf("%d %d %s", crc64.Checksum([]byte(name), table), len(name), names[name]))
	}
	if got := strings.TrimSuffix(string(out), "\n"); got != strings.Join(want, "\n") {
		t.Errorf("csi-plugin sum printed\n%s\nwant\n%s", got, strings.Join(want, "\n"))
	}
}
