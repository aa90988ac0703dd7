package ossclient

import (
	"errors"
	"strings"
	"testing"
)

func TestParseURI(t *testing.T) {
	for _, tc := range []struct {
		in         string
		bucket     string
		prefix     string
		wantString string
	}{
		{"oss://models/qwen/Qwen3-8B/", "models", "qwen/Qwen3-8B/", "oss://models/qwen/Qwen3-8B/"},
		{"oss://models/qwen/Qwen3-8B", "models", "qwen/Qwen3-8B/", "oss://models/qwen/Qwen3-8B/"},
		{"oss://models/", "models", "", "oss://models/"},
		{"oss://models", "models", "", "oss://models/"},
		{"oss://a-b-9/x y/模型+v1/", "a-b-9", "x y/模型+v1/", "oss://a-b-9/x y/模型+v1/"},
		{"oss://abc/Qwen2___5-72B/", "abc", "Qwen2___5-72B/", "oss://abc/Qwen2___5-72B/"},
	} {
		u, err := ParseURI(tc.in)
		if err != nil {
			t.Errorf("ParseURI(%q): %v", tc.in, err)
			continue
		}
		if u.Bucket != tc.bucket || u.Prefix != tc.prefix || u.String() != tc.wantString {
			t.Errorf("ParseURI(%q) = %+v (%s), want bucket %q prefix %q (%s)", tc.in, u, u, tc.bucket, tc.prefix, tc.wantString)
		}
	}
}

func TestParseURIRejects(t *testing.T) {
	for _, tc := range []struct {
		in   string
		hint string // the message must name the problem
	}{
		{"", "must start with oss://"},
		{"s3://bucket/x/", "must start with oss://"},
		{"OSS://bucket/x/", "must start with oss://"},
		{"/models/qwen/", "must start with oss://"},
		{"oss://", "bucket name is missing"},
		{"oss:///qwen/", "bucket name is missing"},
		{"oss://ab/x/", `bucket name "ab"`},
		{"oss://Models/x/", `bucket name "Models"`},
		{"oss://-models/x/", `bucket name "-models"`},
		{"oss://models-/x/", `bucket name "models-"`},
		{"oss://my_bucket/x/", `bucket name "my_bucket"`},
		{"oss://" + strings.Repeat("a", 64) + "/x/", "bucket name"},
		{"oss://models//qwen/", "empty path segment"},
		{"oss://models/qwen//x/", "empty path segment"},
		{"oss://models/../etc/", `".." path segment`},
		{"oss://models/qwen/../../x/", `".." path segment`},
		{"oss://models/./qwen/", `"." path segment`},
		{"oss://models/q\x00wen/", "control character"},
		{"oss://models/q\nwen/", "control character"},
		{"oss://models/q\u0085wen/", "control character U+0085"},
		{"oss://models/q\u202ewen/", "bidirectional formatting character U+202E"},
		{"oss://models/\ufeffqwen/", "byte order mark U+FEFF"},
		{"oss://models/q\xffwen/", "UTF-8"},
		{"oss://models/" + strings.Repeat("a", 300) + "/", "255"},
		{"oss://models/" + strings.Repeat("abcdefgh/", 120), "at most 1023"},
	} {
		_, err := ParseURI(tc.in)
		if !errors.Is(err, ErrInvalidURI) {
			t.Errorf("ParseURI(%q) = %v, want ErrInvalidURI", tc.in, err)
			continue
		}
		if !strings.Contains(err.Error(), tc.hint) || !strings.Contains(err.Error(), "invalid OSS path") {
			t.Errorf("ParseURI(%q) error %q does not say %q", tc.in, err, tc.hint)
		}
	}
}
