package ossclient

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// URI is a model location in OSS: a bucket and a prefix that is always a directory
// ("" for the whole bucket, otherwise ending in "/").
type URI struct {
	Bucket string
	Prefix string
}

const uriScheme = "oss://"

// maxKeyLen is the longest object key OSS accepts, in bytes.
const maxKeyLen = 1023

// ParseURI parses oss://bucket/prefix/. A prefix without a trailing slash is taken as the
// directory of that name. Anything else is an error naming the bad value.
func ParseURI(s string) (URI, error) {
	rest, ok := strings.CutPrefix(s, uriScheme)
	if !ok {
		return URI{}, fmt.Errorf("%w %q: must start with %s (for example oss://bucket/models/qwen/)", ErrInvalidURI, s, uriScheme)
	}
	bucket, prefix, _ := strings.Cut(rest, "/")
	if err := validateBucket(bucket); err != nil {
		return URI{}, fmt.Errorf("%w %q: %w", ErrInvalidURI, s, err)
	}
	if prefix != "" {
		if !strings.HasSuffix(prefix, "/") {
			prefix += "/"
		}
		if err := validatePrefix(prefix); err != nil {
			return URI{}, fmt.Errorf("%w %q: %w", ErrInvalidURI, s, err)
		}
	}
	return URI{Bucket: bucket, Prefix: prefix}, nil
}

func (u URI) String() string { return uriScheme + u.Bucket + "/" + u.Prefix }

// Object returns the oss:// form of one key of the bucket.
func (u URI) Object(key string) string { return uriScheme + u.Bucket + "/" + key }

// validateBucket applies OSS's bucket naming rules: 3 to 63 characters, lower-case letters,
// digits and hyphens, starting and ending with a letter or a digit.
func validateBucket(b string) error {
	if b == "" {
		return fmt.Errorf("bucket name is missing")
	}
	bad := len(b) < 3 || len(b) > 63 || b[0] == '-' || b[len(b)-1] == '-'
	for i := 0; i < len(b) && !bad; i++ {
		c := b[i]
		bad = !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-')
	}
	if bad {
		return fmt.Errorf("bucket name %q must be 3-63 lower-case letters, digits or hyphens, starting and ending with a letter or digit", b)
	}
	return nil
}

// validatePrefix rejects a prefix that could not name a directory of safe relative paths.
func validatePrefix(p string) error {
	if len(p) > maxKeyLen {
		return fmt.Errorf("prefix is %d bytes long, OSS keys are at most %d", len(p), maxKeyLen)
	}
	if err := checkPathChars(p); err != nil {
		return fmt.Errorf("prefix %q: %w", p, err)
	}
	for _, seg := range strings.Split(strings.TrimSuffix(p, "/"), "/") {
		if err := checkSegment(seg); err != nil {
			return fmt.Errorf("prefix %q: %w", p, err)
		}
	}
	return nil
}

// checkPathChars rejects invalid UTF-8, control characters (C0 with NUL, DEL, C1) and the
// characters that make a name display as another: bidirectional formatting (U+061C,
// U+200E, U+200F, U+202A–U+202E, U+2066–U+2069), the byte order mark U+FEFF, and the line
// and paragraph separators U+2028 and U+2029. None belongs in a model's file name; each can
// make a path look like another in a log, an error or a listing.
func checkPathChars(s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("not valid UTF-8")
	}
	for _, r := range s {
		switch {
		case unicode.IsControl(r):
			return fmt.Errorf("contains control character %U", r)
		case unicode.Is(unicode.Bidi_Control, r):
			return fmt.Errorf("contains bidirectional formatting character %U", r)
		case r == '\ufeff':
			return fmt.Errorf("contains byte order mark %U", r)
		case r == '\u2028' || r == '\u2029':
			return fmt.Errorf("contains line or paragraph separator %U", r)
		}
	}
	return nil
}

// checkSegment rejects path segments that would not be a plain name inside a directory.
func checkSegment(seg string) error {
	switch {
	case seg == "":
		return fmt.Errorf("has an empty path segment (\"//\" or a leading \"/\")")
	case seg == "." || seg == "..":
		return fmt.Errorf("has a %q path segment", seg)
	case len(seg) > 255:
		return fmt.Errorf("has a path segment of %d bytes, longer than a file name may be (255)", len(seg))
	}
	return nil
}
