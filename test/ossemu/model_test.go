package ossemu

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/aliyun/alibabacloud-oss-go-sdk-v2/oss"
)

type stTensor struct {
	Dtype       string  `json:"dtype"`
	Shape       []int64 `json:"shape"`
	DataOffsets []int64 `json:"data_offsets"`
}

// checkSafetensors parses a shard's header (given the first bytes of the
// file and its size) and checks that the tensors tile the data exactly.
func checkSafetensors(t *testing.T, name string, head []byte, size int64) map[string]stTensor {
	t.Helper()
	if len(head) < 8 {
		t.Fatalf("%s: %d bytes", name, len(head))
	}
	n := int64(binary.LittleEndian.Uint64(head))
	if n%8 != 0 || 8+n > int64(len(head)) {
		t.Fatalf("%s: header length %d", name, n)
	}
	raw := head[8 : 8+n]
	if trimmed := bytes.TrimRight(raw, " "); !bytes.HasSuffix(trimmed, []byte("}")) {
		t.Errorf("%s: header is not JSON padded with spaces", name)
	}
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(raw, &hdr); err != nil {
		t.Fatalf("%s: header: %v", name, err)
	}
	if _, ok := hdr["__metadata__"]; !ok {
		t.Errorf("%s: no __metadata__", name)
	}
	tensors := map[string]stTensor{}
	type span struct{ begin, end int64 }
	var spans []span
	for k, v := range hdr {
		if k == "__metadata__" {
			continue
		}
		var ts stTensor
		if err := json.Unmarshal(v, &ts); err != nil {
			t.Fatalf("%s: tensor %s: %v", name, k, err)
		}
		elem := map[string]int64{"BF16": 2, "U8": 1}[ts.Dtype]
		if elem == 0 {
			t.Fatalf("%s: tensor %s has dtype %s", name, k, ts.Dtype)
		}
		for _, d := range ts.Shape {
			elem *= d
		}
		if len(ts.DataOffsets) != 2 || ts.DataOffsets[1]-ts.DataOffsets[0] != elem {
			t.Fatalf("%s: tensor %s: offsets %v for %d bytes", name, k, ts.DataOffsets, elem)
		}
		tensors[k] = ts
		spans = append(spans, span{ts.DataOffsets[0], ts.DataOffsets[1]})
	}
	slices.SortFunc(spans, func(a, b span) int { return int(a.begin - b.begin) })
	at := int64(0)
	for _, s := range spans {
		if s.begin != at {
			t.Fatalf("%s: tensor data has a gap or overlap at %d", name, at)
		}
		at = s.end
	}
	if at != size-8-n {
		t.Fatalf("%s: tensors cover %d bytes of %d", name, at, size-8-n)
	}
	return tensors
}

// checkModel fetches every object of a generated model with the SDK and
// checks its shape; it returns the objects' bytes by name.
func checkModel(t *testing.T, srv *Server, prefix string, infos []ObjectInfo, size int64, shards int) map[string][]byte {
	t.Helper()
	c := newClient(srv)
	files := map[string][]byte{}
	var total int64
	for _, info := range infos {
		got, res := getBytes(t, c, info.Bucket, info.Key)
		if int64(len(got)) != info.Size || oss.ToString(res.HashCRC64) != crcOf(got) || fmt.Sprint(info.CRC64) != crcOf(got) ||
			oss.ToString(res.ETag) != info.ETag || info.ETag != crcETag(info.CRC64, info.Size) {
			t.Errorf("%s: %d bytes, CRC %s, ETag %s; info %+v", info.Key, len(got), oss.ToString(res.HashCRC64), oss.ToString(res.ETag), info)
		}
		files[strings.TrimPrefix(info.Key, prefix)] = got
		total += info.Size
	}
	if total != size {
		t.Errorf("objects total %d bytes, want exactly %d", total, size)
	}
	for _, name := range []string{"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json"} {
		var v map[string]any
		if err := json.Unmarshal(files[name], &v); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if n := len(files["tokenizer.json"]); n < 10_000 || n > 100_000 {
		t.Errorf("tokenizer.json is %d bytes, want tens of KB", n)
	}
	var index struct {
		Metadata struct {
			TotalSize int64 `json:"total_size"`
		} `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(files["model.safetensors.index.json"], &index); err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	var tensorBytes int64
	for i := 1; i <= shards; i++ {
		name := fmt.Sprintf("model-%05d-of-%05d.safetensors", i, shards)
		data, ok := files[name]
		if !ok {
			t.Fatalf("no shard %s among %d files", name, len(files))
		}
		for k, ts := range checkSafetensors(t, name, data, int64(len(data))) {
			seen[k] = name
			tensorBytes += ts.DataOffsets[1] - ts.DataOffsets[0]
		}
		hl := binary.LittleEndian.Uint64(data)
		if body := data[8+hl:]; len(body) >= 64 && bytes.Count(body[:64], []byte{0}) > 8 {
			t.Errorf("%s: tensor data looks like zeros", name)
		}
	}
	if len(files) != shards+5 {
		t.Errorf("%d files, want %d shards + 5", len(files), shards)
	}
	if !mapsEqual(seen, index.WeightMap) {
		t.Errorf("weight_map has %d entries, shards hold %d tensors", len(index.WeightMap), len(seen))
	}
	if index.Metadata.TotalSize != tensorBytes {
		t.Errorf("total_size = %d, want %d", index.Metadata.TotalSize, tensorBytes)
	}
	return files
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestGenerateModel(t *testing.T) {
	srv := Start(t, Options{})
	const size = 6<<20 + 12345
	mem, err := srv.GenerateModel("models", "llama/", ModelSpec{Size: size, Shards: 3, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	memFiles := checkModel(t, srv, "llama/", mem, size, 3)
	var cfg struct {
		NumHiddenLayers int `json:"num_hidden_layers"`
	}
	if err := json.Unmarshal(memFiles["config.json"], &cfg); err != nil || cfg.NumHiddenLayers < 1 {
		t.Errorf("config.json has %d layers (%v), want real tensors", cfg.NumHiddenLayers, err)
	}

	// Same seed, same bytes; Dir mode serves the same bytes from disk.
	dir := t.TempDir()
	disk, err := srv.GenerateModel("models", "llama-disk/", ModelSpec{Size: size, Shards: 3, Seed: 7, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	diskFiles := checkModel(t, srv, "llama-disk/", disk, size, 3)
	for name, b := range memFiles {
		if !bytes.Equal(b, diskFiles[name]) {
			t.Errorf("%s differs between memory and Dir mode", name)
		}
		onDisk, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || !bytes.Equal(onDisk, b) {
			t.Errorf("%s on disk: %d bytes, %v", name, len(onDisk), err)
		}
	}
	for i := range mem {
		if mem[i].CRC64 != disk[i].CRC64 || mem[i].ETag != disk[i].ETag {
			t.Errorf("%s: CRC or ETag differ between memory and Dir mode", mem[i].Key)
		}
	}

	// Another seed, other weights.
	other, err := srv.GenerateModel("models", "other/", ModelSpec{Size: size, Shards: 3, Seed: 8})
	if err != nil {
		t.Fatal(err)
	}
	for i := range other {
		if strings.HasSuffix(other[i].Key, ".safetensors") && other[i].CRC64 == mem[i].CRC64 {
			t.Errorf("%s: same CRC with another seed", other[i].Key)
		}
	}

	// Regenerating in place replaces the files atomically.
	if _, err := srv.GenerateModel("models", "llama-disk/", ModelSpec{Size: size, Shards: 3, Seed: 9, Dir: dir}); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 8 {
		t.Errorf("model directory holds %d entries, want 8", len(entries))
	}
}

func TestGenerateModelSmall(t *testing.T) {
	srv := Start(t, Options{})
	const size = 120_000 // too small for real tensors: fillers only
	infos, err := srv.GenerateModel("models", "tiny/", ModelSpec{Size: size, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	checkModel(t, srv, "tiny/", infos, size, 1)
	if _, err := srv.GenerateModel("models", "too-small/", ModelSpec{Size: 10_000}); err == nil {
		t.Error("a 10 kB model was generated")
	}
}

// TestPlanModel checks layouts of large models without generating them.
func TestPlanModel(t *testing.T) {
	for _, tc := range []struct {
		size       int64
		shards     int
		wantShards int
	}{
		{1 << 20, 0, 1},
		{64<<20 + 1, 0, 1},
		{1<<30 + 1, 0, 2},
		{5 << 30, 0, 5},
		{14_483_456_000, 0, 14},
		{140 << 30, 0, 140},
		{100 << 20, 16, 16},
		{3 << 20, 50, 50},
	} {
		t.Run(fmt.Sprintf("%d/%d", tc.size, tc.shards), func(t *testing.T) {
			files, err := planModel(ModelSpec{Size: tc.size, Shards: tc.shards})
			if err != nil {
				t.Fatal(err)
			}
			var total int64
			shards := 0
			for _, f := range files {
				total += f.fileSize()
				if f.header != nil {
					shards++
					checkSafetensors(t, f.name, f.header, f.size)
				}
			}
			if total != tc.size || shards != tc.wantShards {
				t.Errorf("%d bytes in %d shards, want %d in %d", total, shards, tc.size, tc.wantShards)
			}
		})
	}
}
