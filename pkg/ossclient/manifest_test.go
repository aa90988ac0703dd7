package ossclient

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func testObjects() []Object {
	return []Object{
		{Key: "m/model-00002-of-00002.safetensors", Size: 300, ETag: `"B"`, CRC64: 2},
		{Key: "m/config.json", Size: 10, ETag: `"A"`, CRC64: 1},
		{Key: "m/model-00001-of-00002.safetensors", Size: 200, ETag: `"C"`, CRC64: 3},
		{Key: "m/sub dir/tokenizer+v2 模型.json", Size: 0, ETag: `"D"`, CRC64: 0},
	}
}

func TestNewManifestOrderOffsetsFingerprint(t *testing.T) {
	m, err := NewManifest("models", "m/", testObjects())
	if err != nil {
		t.Fatal(err)
	}
	wantKeys := []string{"m/config.json", "m/model-00001-of-00002.safetensors", "m/model-00002-of-00002.safetensors", "m/sub dir/tokenizer+v2 模型.json"}
	wantOffsets := []int64{0, 10, 210, 510}
	for i, o := range m.Objects {
		if o.Key != wantKeys[i] || m.Offset(i) != wantOffsets[i] {
			t.Errorf("object %d = %s at %d, want %s at %d", i, o.Key, m.Offset(i), wantKeys[i], wantOffsets[i])
		}
	}
	if m.Size() != 510 || m.Path(3) != "sub dir/tokenizer+v2 模型.json" || m.URI().String() != "oss://models/m/" {
		t.Errorf("size %d path %q uri %s", m.Size(), m.Path(3), m.URI())
	}

	// Same objects in another order: same fingerprint. Any change of content: another one.
	shuffled := testObjects()
	shuffled[0], shuffled[3] = shuffled[3], shuffled[0]
	same, _ := NewManifest("models", "m/", shuffled)
	if same.Fingerprint() != m.Fingerprint() {
		t.Errorf("fingerprint depends on listing order")
	}
	for name, mutate := range map[string]func(o []Object){
		"etag":  func(o []Object) { o[0].ETag = `"B2"` },
		"size":  func(o []Object) { o[0].Size++ },
		"crc":   func(o []Object) { o[0].CRC64++ },
		"key":   func(o []Object) { o[0].Key += "x" },
		"extra": func(o []Object) { o[3].Key = "m/other" },
	} {
		objs := testObjects()
		mutate(objs)
		other, err := NewManifest("models", "m/", objs)
		if err != nil {
			t.Fatal(err)
		}
		if other.Fingerprint() == m.Fingerprint() {
			t.Errorf("changing the %s keeps the fingerprint", name)
		}
	}
}

func TestManifestJSONRoundTrip(t *testing.T) {
	m, err := NewManifest("models", "m/", testObjects())
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeManifest(data)
	if err != nil {
		t.Fatal(err)
	}
	if back.Fingerprint() != m.Fingerprint() || back.Size() != m.Size() || len(back.Objects) != len(m.Objects) {
		t.Errorf("round trip changed the manifest: %s", data)
	}

	// A manifest from Redis is untrusted input.
	var w manifestJSON
	_ = json.Unmarshal(data, &w)
	w.Objects[0].Key = "m/../../etc/passwd"
	evil, _ := json.Marshal(w)
	if _, err := DecodeManifest(evil); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("traversal key in a published manifest: %v, want ErrInvalidKey", err)
	}
	_ = json.Unmarshal(data, &w)
	w.Objects[0].Size = 11
	tampered, _ := json.Marshal(w)
	if _, err := DecodeManifest(tampered); err == nil || !strings.Contains(err.Error(), "fingerprint") {
		t.Errorf("tampered manifest: %v, want a fingerprint mismatch", err)
	}
	if _, err := DecodeManifest([]byte("{")); err == nil {
		t.Errorf("truncated JSON accepted")
	}
}

func TestNewManifestRejectsUnsafeKeys(t *testing.T) {
	for _, tc := range []struct {
		key  string
		hint string
	}{
		{"m/../x", `".." path segment`},
		{"m/a/../../x", `".." path segment`},
		{"m/./x", `"." path segment`},
		{"m//etc/passwd", "empty path segment"},
		{"m/a//b", "empty path segment"},
		{"m/a\x00b", "control character"},
		{"m/a\nb", "control character"},
		{"m/a\x7fb", "control character"},
		{"m/a\u0085b", "control character U+0085"}, // C1: NEL
		{"m/a\u009bb", "control character U+009B"}, // C1: CSI, a terminal escape
		{"m/a\u202eb", "bidirectional formatting character U+202E"},
		{"m/a\u202ab", "bidirectional formatting character U+202A"},
		{"m/a\u2066b", "bidirectional formatting character U+2066"},
		{"m/a\u2069b", "bidirectional formatting character U+2069"},
		{"m/a\u200eb", "bidirectional formatting character U+200E"},
		{"m/a\u200fb", "bidirectional formatting character U+200F"},
		{"m/a\u061cb", "bidirectional formatting character U+061C"},
		{"m/\ufeffconfig.json", "byte order mark U+FEFF"},
		{"m/a\u2028b", "line or paragraph separator U+2028"},
		{"m/\xc3\x28", "UTF-8"},
		{"m/dir/", `ends in "/"`},
		{"m/", "model directory itself"},
		{"other/x", "not under the prefix"},
		{"m/" + strings.Repeat("x", 256), "255"},
	} {
		objs := append(testObjects(), Object{Key: tc.key, Size: 1, ETag: `"E"`})
		_, err := NewManifest("models", "m/", objs)
		if !errors.Is(err, ErrInvalidKey) || !strings.Contains(err.Error(), tc.hint) {
			t.Errorf("key %q: %v, want ErrInvalidKey saying %q", tc.key, err, tc.hint)
			continue
		}
		if !strings.Contains(err.Error(), "oss://models/m/") {
			t.Errorf("key %q: error %q does not name the model", tc.key, err)
		}
	}
}

func TestNewManifestRejectsConflicts(t *testing.T) {
	objs := append(testObjects(), Object{Key: "m/config.json/nested", Size: 1})
	if _, err := NewManifest("models", "m/", objs); !errors.Is(err, ErrInvalidKey) || !strings.Contains(err.Error(), "both a file and a directory") {
		t.Errorf("file/directory clash: %v", err)
	}
	objs = append(testObjects(), testObjects()[0])
	if _, err := NewManifest("models", "m/", objs); !errors.Is(err, ErrInvalidKey) || !strings.Contains(err.Error(), "listed twice") {
		t.Errorf("duplicate key: %v", err)
	}
}
