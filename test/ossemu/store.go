package ossemu

import (
	"crypto/md5"
	"encoding/base64"
	"fmt"
	"io/fs"
	"mime"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// ObjectInfo describes a stored object as OSS reports it.
type ObjectInfo struct {
	Bucket, Key  string
	Size         int64
	ETag         string // with quotes, as in the ETag header
	CRC64        uint64 // x-oss-hash-crc64ecma
	LastModified time.Time
}

// BucketOptions configure a bucket.
type BucketOptions struct {
	// PublicRead lets anonymous requests list and read the bucket.
	PublicRead bool
}

// object is one immutable version of an object: replacing an object swaps
// the pointer, so a request that captured the old one keeps serving it.
type object struct {
	bucket, key string
	size        int64
	etag        string
	contentMD5  string // base64, only when the MD5 is known
	crc         uint64
	modTime     time.Time
	contentType string
	data        []byte // in-memory body, or nil when file-backed
	path        string // file-backed body
}

func (o *object) info() ObjectInfo {
	return ObjectInfo{Bucket: o.bucket, Key: o.key, Size: o.size, ETag: o.etag, CRC64: o.crc, LastModified: o.modTime}
}

type bucket struct {
	name       string
	publicRead bool
	objects    map[string]*object
	// keys holds the object keys in byte order when sorted is true; when it
	// is false, keys is rebuilt from objects at the next listing.
	keys   []string
	sorted bool
}

func (b *bucket) put(o *object) {
	if _, ok := b.objects[o.key]; ok {
		b.objects[o.key] = o
		return
	}
	b.objects[o.key] = o
	if b.sorted && (len(b.keys) == 0 || b.keys[len(b.keys)-1] < o.key) {
		b.keys = append(b.keys, o.key)
		return
	}
	b.sorted = false
}

func (b *bucket) delete(key string) {
	if _, ok := b.objects[key]; !ok {
		return
	}
	delete(b.objects, key)
	if b.sorted {
		if i, found := slices.BinarySearch(b.keys, key); found {
			b.keys = slices.Delete(b.keys, i, i+1)
			return
		}
	}
	b.sorted = false
}

// sortKeys makes keys valid; the caller holds the store's write lock.
func (b *bucket) sortKeys() {
	if b.sorted {
		return
	}
	b.keys = b.keys[:0]
	for k := range b.objects {
		b.keys = append(b.keys, k)
	}
	sort.Strings(b.keys)
	b.sorted = true
}

// store holds the buckets. One lock covers all of them: requests hold it
// only to look objects up, never while streaming.
type store struct {
	mu      sync.RWMutex
	buckets map[string]*bucket
}

func newStore() *store { return &store{buckets: map[string]*bucket{}} }

// createBucket creates the bucket if missing; publicRead is or'ed in.
func (st *store) createBucket(name string, publicRead bool) *bucket {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.createBucketLocked(name, publicRead)
}

func (st *store) createBucketLocked(name string, publicRead bool) *bucket {
	b, ok := st.buckets[name]
	if !ok {
		b = &bucket{name: name, objects: map[string]*object{}, sorted: true}
		st.buckets[name] = b
	}
	b.publicRead = b.publicRead || publicRead
	return b
}

// bucketInfo reports whether the bucket exists and whether it is public.
func (st *store) bucketInfo(name string) (exists, publicRead bool) {
	st.mu.RLock()
	defer st.mu.RUnlock()
	b, ok := st.buckets[name]
	return ok, ok && b.publicRead
}

// lookup returns the current version of an object.
func (st *store) lookup(bucketName, key string) (*object, *ossError) {
	st.mu.RLock()
	defer st.mu.RUnlock()
	b, ok := st.buckets[bucketName]
	if !ok {
		return nil, errNoSuchBucket(bucketName)
	}
	o, ok := b.objects[key]
	if !ok {
		return nil, errNoSuchKey(key)
	}
	return o, nil
}

// put stores o, creating its bucket when create is set.
func (st *store) put(o *object, create bool) *ossError {
	st.mu.Lock()
	defer st.mu.Unlock()
	b, ok := st.buckets[o.bucket]
	if !ok {
		if !create {
			return errNoSuchBucket(o.bucket)
		}
		b = st.createBucketLocked(o.bucket, false)
	}
	b.put(o)
	return nil
}

func (st *store) exists(bucketName, key string) bool {
	_, err := st.lookup(bucketName, key)
	return err == nil
}

func (st *store) delete(bucketName, key string) *ossError {
	st.mu.Lock()
	defer st.mu.Unlock()
	b, ok := st.buckets[bucketName]
	if !ok {
		return errNoSuchBucket(bucketName)
	}
	b.delete(key)
	return nil
}

func (st *store) totals() (objects int, bytes int64) {
	st.mu.RLock()
	defer st.mu.RUnlock()
	for _, b := range st.buckets {
		for _, o := range b.objects {
			objects++
			bytes += o.size
		}
	}
	return objects, bytes
}

// now is the modification time given to new objects: OSS reports times to
// the second, so the stored time is truncated to keep HEAD and list equal.
func now() time.Time { return time.Now().UTC().Truncate(time.Second) }

func contentTypeOf(key string) string {
	if t := mime.TypeByExtension(path.Ext(key)); t != "" {
		return t
	}
	return "application/octet-stream"
}

// md5ETag is the ETag OSS gives a simple upload: the upper-case hex MD5.
func md5ETag(sum [md5.Size]byte) string { return fmt.Sprintf(`"%X"`, sum[:]) }

// crcETag stands in for the MD5 ETag of large objects, whose MD5 would be
// too slow to compute.
func crcETag(crc uint64, size int64) string { return fmt.Sprintf(`"%016X%016X"`, crc, uint64(size)) }

func newMemoryObject(bucketName, key, contentType string, data []byte) *object {
	sum := md5.Sum(data)
	return &object{
		bucket:      bucketName,
		key:         key,
		size:        int64(len(data)),
		etag:        md5ETag(sum),
		contentMD5:  base64.StdEncoding.EncodeToString(sum[:]),
		crc:         crc64ECMA(0, data),
		modTime:     now(),
		contentType: contentType,
		data:        data,
	}
}

// CreateBucket creates a bucket; it is idempotent, and PublicRead, once
// set, stays set.
func (s *Server) CreateBucket(name string, opts BucketOptions) {
	s.store.createBucket(name, opts.PublicRead)
}

// PutObject stores a copy of data as bucket/key, creating the bucket if
// missing and replacing any existing object.
func (s *Server) PutObject(bucketName, key string, data []byte) ObjectInfo {
	o := newMemoryObject(bucketName, key, contentTypeOf(key), slices.Clone(data))
	_ = s.store.put(o, true)
	return o.info()
}

// PutFile stores the file at path as bucket/key. The file is served from
// disk (with sendfile) and must not change afterwards; its size and CRC are
// computed now.
func (s *Server) PutFile(bucketName, key, path string) (ObjectInfo, error) {
	o, err := fileObject(bucketName, key, path)
	if err != nil {
		return ObjectInfo{}, err
	}
	_ = s.store.put(o, true)
	return o.info(), nil
}

func fileObject(bucketName, key, path string) (*object, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open object file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat object file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("object file %s is not a regular file", path)
	}
	crc, err := crcReaderAt(f, fi.Size())
	if err != nil {
		return nil, fmt.Errorf("checksum %s: %w", path, err)
	}
	return &object{
		bucket:      bucketName,
		key:         key,
		size:        fi.Size(),
		etag:        crcETag(crc, fi.Size()),
		crc:         crc,
		modTime:     now(),
		contentType: contentTypeOf(key),
		path:        path,
	}, nil
}

// Totals returns the number of objects stored and their total size.
func (s *Server) Totals() (objects int, bytes int64) { return s.store.totals() }

// DeleteObject removes bucket/key if it exists.
func (s *Server) DeleteObject(bucketName, key string) {
	_ = s.store.delete(bucketName, key)
}

// LoadDir stores every regular file under dir (symbolic links to regular
// files included) as prefix + its slash-separated relative path,
// file-backed. Objects are returned in key order.
func (s *Server) LoadDir(bucketName, prefix, dir string) ([]ObjectInfo, error) {
	var objs []*object
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		if !d.Type().IsRegular() {
			fi, err := os.Stat(p) // follows symbolic links
			if err != nil || !fi.Mode().IsRegular() {
				return nil //nolint:nilerr // dangling links and special files are skipped
			}
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		o, err := fileObject(bucketName, prefix+filepath.ToSlash(rel), p)
		if err != nil {
			return err
		}
		objs = append(objs, o)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", dir, err)
	}
	s.store.createBucket(bucketName, false)
	infos := make([]ObjectInfo, len(objs))
	for i, o := range objs {
		_ = s.store.put(o, true)
		infos[i] = o.info()
	}
	slices.SortFunc(infos, func(a, b ObjectInfo) int { return strings.Compare(a.Key, b.Key) })
	return infos, nil
}
