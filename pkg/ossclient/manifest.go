package ossclient

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/aliyun/alibabacloud-oss-go-sdk-v2/oss"
	"golang.org/x/sync/errgroup"
	"k8s.io/klog/v2"

	"github.com/modelcast/modelcast/internal/units"
)

// Manifest pins one version of a model: every object under a prefix with the size, ETag and
// CRC-64 that OSS reported. Downloads are checked against it, so every node that stages the
// same manifest ends with the same bytes. Build one with Client.Manifest, NewManifest or
// DecodeManifest; the zero value is not usable.
type Manifest struct {
	Bucket string
	Prefix string
	// Objects in model order: sorted by key. A model's bytes are its objects concatenated
	// in this order; Offset gives where each one starts.
	Objects []Object

	size        int64
	offsets     []int64
	fingerprint string
}

// Object is one file of a model.
type Object struct {
	Key   string `json:"key"` // the full OSS key: Prefix + Path
	Size  int64  `json:"size"`
	ETag  string `json:"etag"`
	CRC64 uint64 `json:"crc64"`
}

// manifestJSON is the wire form (the chain publishes manifests in Redis).
type manifestJSON struct {
	Bucket      string   `json:"bucket"`
	Prefix      string   `json:"prefix"`
	Objects     []Object `json:"objects"`
	Fingerprint string   `json:"fingerprint"`
}

// NewManifest validates the objects of a model, sorts them into model order and computes the
// fingerprint. Every key must lie under prefix and name a safe relative path.
func NewManifest(bucket, prefix string, objects []Object) (*Manifest, error) {
	if err := validateBucket(bucket); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidURI, err)
	}
	if prefix != "" {
		if err := validatePrefix(prefix); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidURI, err)
		}
	}
	m := &Manifest{Bucket: bucket, Prefix: prefix, Objects: slices.Clone(objects)}
	slices.SortFunc(m.Objects, func(a, b Object) int { return strings.Compare(a.Key, b.Key) })
	files := make(map[string]bool, len(m.Objects))
	for _, o := range m.Objects {
		rel, err := relPath(prefix, o.Key)
		if err != nil {
			return nil, fmt.Errorf("%w %q in %s: %w", ErrInvalidKey, o.Key, m.URI(), err)
		}
		if o.Size < 0 {
			return nil, fmt.Errorf("%w %q in %s: negative size %d", ErrInvalidKey, o.Key, m.URI(), o.Size)
		}
		if files[rel] {
			return nil, fmt.Errorf("%w %q in %s: listed twice", ErrInvalidKey, o.Key, m.URI())
		}
		files[rel] = true
	}
	// A path cannot be both a file and a directory ("a" and "a/b").
	for rel := range files {
		for dir := rel; ; {
			i := strings.LastIndexByte(dir, '/')
			if i < 0 {
				break
			}
			dir = dir[:i]
			if files[dir] {
				return nil, fmt.Errorf("%w %q in %s: %q is both a file and a directory", ErrInvalidKey, prefix+rel, m.URI(), prefix+dir)
			}
		}
	}
	m.offsets = make([]int64, len(m.Objects))
	h := sha256.New()
	for i, o := range m.Objects {
		m.offsets[i] = m.size
		m.size += o.Size
		// Length-prefixed fields: no key can be crafted to collide with another listing.
		fmt.Fprintf(h, "%d:%s%d:%s%d:%d;", len(o.Key)-len(prefix), o.Key[len(prefix):], len(o.ETag), o.ETag, o.Size, o.CRC64)
	}
	m.fingerprint = hex.EncodeToString(h.Sum(nil))
	return m, nil
}

// relPath returns key relative to prefix, if it is a safe relative file path.
func relPath(prefix, key string) (string, error) {
	rel, ok := strings.CutPrefix(key, prefix)
	switch {
	case !ok:
		return "", fmt.Errorf("not under the prefix %q", prefix)
	case rel == "":
		return "", fmt.Errorf("names the model directory itself")
	case len(key) > maxKeyLen:
		return "", fmt.Errorf("longer than %d bytes", maxKeyLen)
	case strings.HasSuffix(rel, "/"):
		return "", fmt.Errorf("ends in \"/\" but holds data")
	}
	if err := checkPathChars(rel); err != nil {
		return "", err
	}
	for _, seg := range strings.Split(rel, "/") {
		if err := checkSegment(seg); err != nil {
			return "", err
		}
	}
	return rel, nil
}

// URI is where the model lives.
func (m *Manifest) URI() URI { return URI{Bucket: m.Bucket, Prefix: m.Prefix} }

// Size is the model's total size in bytes.
func (m *Manifest) Size() int64 { return m.size }

// Fingerprint identifies the model's content: same objects, sizes, ETags and CRCs ⇒ same value.
func (m *Manifest) Fingerprint() string { return m.fingerprint }

// Offset is where object i starts in the model's byte stream.
func (m *Manifest) Offset(i int) int64 { return m.offsets[i] }

// Path is object i's path relative to the model directory (slash-separated).
func (m *Manifest) Path(i int) string { return m.Objects[i].Key[len(m.Prefix):] }

// MarshalJSON encodes the manifest with its fingerprint.
func (m *Manifest) MarshalJSON() ([]byte, error) {
	return json.Marshal(manifestJSON{Bucket: m.Bucket, Prefix: m.Prefix, Objects: m.Objects, Fingerprint: m.fingerprint})
}

// DecodeManifest parses a manifest published by another node and validates it as strictly as
// one listed from OSS: it comes from outside (Redis) and becomes paths on this node.
func DecodeManifest(data []byte) (*Manifest, error) {
	var w manifestJSON
	if err := json.Unmarshal(data, &w); err != nil {
		return nil, fmt.Errorf("decode manifest: %w", err)
	}
	m, err := NewManifest(w.Bucket, w.Prefix, w.Objects)
	if err != nil {
		return nil, fmt.Errorf("decode manifest: %w", err)
	}
	if w.Fingerprint != m.fingerprint {
		return nil, fmt.Errorf("decode manifest of %s: fingerprint %q does not match its objects (%q)", m.URI(), w.Fingerprint, m.fingerprint)
	}
	return m, nil
}

// headConcurrency bounds the parallel HEAD requests of a manifest.
const headConcurrency = 32

// Manifest lists every object under u and HEADs each one (with bounded parallelism) for its
// size, ETag and CRC-64. Zero-byte "directory" keys (ending in "/") are skipped. A key that
// cannot be a safe path inside the model directory fails the whole manifest (ErrInvalidKey);
// a prefix with no objects is ErrNotFound. A model past Config.Limits — more objects or bytes,
// or a listing that goes on past Limits.MaxListPages pages — is ErrTooLarge, found while
// listing, before any HEAD. A listing that does not advance (a key that does not come after
// the one before it, when OSS lists each key once, in order) is ErrUnavailable at once.
func (c *Client) Manifest(ctx context.Context, u URI) (*Manifest, error) {
	logger := klog.FromContext(ctx)
	lim := c.cfg.Limits
	var (
		objects []Object
		size    int64  // the bytes of objects, as the listing reports them
		last    string // the last key listed
		pages   int
	)
	p := c.sdk.NewListObjectsV2Paginator(&oss.ListObjectsV2Request{
		Bucket:  oss.Ptr(u.Bucket),
		Prefix:  oss.Ptr(u.Prefix),
		MaxKeys: listPageKeys,
	})
	for p.HasNext() {
		if pages == lim.MaxListPages() {
			return nil, tooLarge(u, fmt.Errorf("the listing goes on past %d pages of up to %d keys, OSS answering IsTruncated each time (the bound follows %s: 2 pages per %d objects, plus 1)",
				pages, listPageKeys, lim.objectsSetting(), listPageKeys))
		}
		page, err := p.NextPage(ctx)
		if err != nil {
			c.observe(ctx, "list", err)
			return nil, opError(ctx, "list", u.String(), err)
		}
		pages++
		for _, o := range page.Contents {
			key := oss.ToString(o.Key)
			if last != "" && key <= last {
				// OSS lists each key once, in order: this listing repeats itself.
				return nil, &Error{Op: "list", Target: u.String(), Kind: ErrUnavailable,
					Err: fmt.Errorf("OSS listed %q after %q (page %d): the listing does not advance", key, last, pages)}
			}
			last = key
			if o.Size == 0 && (strings.HasSuffix(key, "/") || key == u.Prefix) {
				continue // a "directory" placeholder
			}
			if _, err := relPath(u.Prefix, key); err != nil {
				return nil, fmt.Errorf("%w %q in %s: %w", ErrInvalidKey, key, u, err)
			}
			if len(objects) == lim.MaxObjects {
				return nil, tooLarge(u, lim.objectsError())
			}
			if size += o.Size; size > lim.MaxBytes {
				return nil, tooLarge(u, lim.bytesError())
			}
			objects = append(objects, Object{Key: key})
		}
	}
	if len(objects) == 0 {
		return nil, &Error{Op: "list", Target: u.String(), Kind: ErrNotFound, Err: fmt.Errorf("no objects under the prefix")}
	}

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(headConcurrency)
	for i := range objects {
		g.Go(func() error {
			o := &objects[i]
			res, err := c.sdk.HeadObject(gctx, &oss.HeadObjectRequest{Bucket: oss.Ptr(u.Bucket), Key: oss.Ptr(o.Key)})
			if err != nil {
				c.observe(gctx, "head", err)
				return opError(gctx, "head", u.Object(o.Key), err)
			}
			o.Size = res.ContentLength
			o.ETag = oss.ToString(res.ETag)
			crc := oss.ToString(res.HashCRC64)
			if crc == "" {
				return &Error{Op: "head", Target: u.Object(o.Key), Kind: ErrIntegrity,
					Err: fmt.Errorf("OSS holds no CRC-64 (x-oss-hash-crc64ecma) for the object, so its bytes cannot be verified; copy the object onto itself to have OSS compute one")}
			}
			if o.CRC64, err = strconv.ParseUint(crc, 10, 64); err != nil {
				return &Error{Op: "head", Target: u.Object(o.Key), Kind: ErrIntegrity, Err: fmt.Errorf("unparsable x-oss-hash-crc64ecma %q", crc)}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	m, err := NewManifest(u.Bucket, u.Prefix, objects)
	if err != nil {
		return nil, err
	}
	if err := c.checkLimits(m); err != nil {
		return nil, err // the objects grew between the LIST and their HEADs
	}
	logger.V(2).Info("Listed model", "model", u.String(), "objects", len(m.Objects), "bytes", m.Size(), "fingerprint", m.Fingerprint())
	return m, nil
}

// Check makes sure these credentials can read m as pinned: one HEAD of its first object, with
// If-Match on the manifest's ETag. A manifest published by another node is used only after it
// passes (ErrAccessDenied, or ErrChanged/ErrNotFound when OSS moved on), and only within this
// client's Limits (ErrTooLarge).
func (c *Client) Check(ctx context.Context, m *Manifest) error {
	if len(m.Objects) == 0 {
		return &Error{Op: "head", Target: m.URI().String(), Kind: ErrNotFound, Err: fmt.Errorf("the manifest lists no objects")}
	}
	if err := c.checkLimits(m); err != nil {
		return err // published by a node with other bounds
	}
	o := m.Objects[0]
	res, err := c.sdk.HeadObject(ctx, &oss.HeadObjectRequest{Bucket: oss.Ptr(m.Bucket), Key: oss.Ptr(o.Key), IfMatch: oss.Ptr(o.ETag)})
	if err != nil {
		c.observe(ctx, "head", err)
		return opError(ctx, "head", m.URI().Object(o.Key), err)
	}
	if etag := oss.ToString(res.ETag); etag != o.ETag || res.ContentLength != o.Size {
		return &Error{Op: "head", Target: m.URI().Object(o.Key), Kind: ErrChanged,
			Err: fmt.Errorf("OSS has ETag %s and %d bytes, the manifest %s and %d", etag, res.ContentLength, o.ETag, o.Size)}
	}
	return nil
}

// checkLimits refuses a manifest past the client's Limits.
func (c *Client) checkLimits(m *Manifest) error {
	switch lim := c.cfg.Limits; {
	case len(m.Objects) > lim.MaxObjects:
		return tooLarge(m.URI(), lim.objectsError())
	case m.Size() > lim.MaxBytes:
		return tooLarge(m.URI(), lim.bytesError())
	}
	return nil
}

// tooLarge is the error of a model at u past a bound: why (a bound's error), and what to do.
func tooLarge(u URI, why error) error {
	hint := "if " + u.String() + " is one model's directory, raise the bound"
	if u.Prefix == "" {
		hint = u.String() + " is the whole bucket: give the model's directory, " + u.String() + "<prefix>/"
	}
	return &Error{Op: "list", Target: u.String(), Kind: ErrTooLarge, Err: fmt.Errorf("%w; %s", why, hint)}
}

func (l Limits) objectsSetting() string {
	return fmt.Sprintf("model.maxObjects = %d in the node's config", l.MaxObjects)
}

func (l Limits) objectsError() error {
	return fmt.Errorf("more than %d objects under the prefix (the bound is %s)", l.MaxObjects, l.objectsSetting())
}

func (l Limits) bytesError() error {
	return fmt.Errorf("more than %s under the prefix (the bound is model.maxSizeGB = %g in the node's config)",
		units.Bytes(l.MaxBytes), float64(l.MaxBytes)/1e9)
}
