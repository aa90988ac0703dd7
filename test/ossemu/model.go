package ossemu

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// ModelSpec describes a synthetic model for GenerateModel.
type ModelSpec struct {
	// Size is the total size of all the model's objects, exactly.
	Size int64
	// Shards is the number of safetensors files; 0 picks about 1 GiB per shard.
	Shards int
	// Seed selects the content: the same seed gives the same bytes.
	Seed int64
	// Dir, when set, receives the files (Dir/config.json, ...), which are
	// then served file-backed; when empty the model is kept in memory.
	Dir string
}

// GenerateModel stores a Hugging-Face-shaped model under prefix: config.json,
// generation_config.json, tokenizer.json, tokenizer_config.json,
// model.safetensors.index.json and valid safetensors shards
// model-0000i-of-0000N.safetensors whose tensors hold pseudo-random bytes.
// Objects are returned in key order.
func (s *Server) GenerateModel(bucketName, prefix string, spec ModelSpec) ([]ObjectInfo, error) {
	files, err := planModel(spec)
	if err != nil {
		return nil, fmt.Errorf("plan model %s/%s: %w", bucketName, prefix, err)
	}
	dir := spec.Dir
	if dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("model directory: %w", err)
		}
	}
	modTime := now()
	objs := make([]*object, 0, len(files))
	for i := range files {
		f := &files[i]
		o := &object{
			bucket:      bucketName,
			key:         prefix + f.name,
			size:        f.fileSize(),
			modTime:     modTime,
			contentType: contentTypeOf(f.name),
		}
		if dir == "" {
			o.data, o.crc = f.generate()
		} else {
			o.path = filepath.Join(dir, f.name)
			if o.crc, err = f.write(o.path); err != nil {
				return nil, fmt.Errorf("model %s/%s: %w", bucketName, prefix, err)
			}
		}
		o.etag = crcETag(o.crc, o.size)
		objs = append(objs, o)
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

// produce returns the bytes [off, off+len(p)) of the file, written into p.
// off is a multiple of 8 (segments are), as is the header length.
func (f *modelFile) produce(off int64, p []byte) []byte {
	if f.header == nil {
		copy(p, f.text[off:])
		return p
	}
	hl := int64(len(f.header))
	if off < hl {
		c := copy(p, f.header[off:])
		fillRandom(f.key, 0, p[c:])
		return p
	}
	fillRandom(f.key, off-hl, p)
	return p
}

// generate builds the file in memory and returns it with its CRC.
func (f *modelFile) generate() ([]byte, uint64) {
	if f.header == nil {
		return f.text, crc64ECMA(0, f.text)
	}
	buf := make([]byte, f.size)
	crc, _ := parallelCRC(f.size, func(off, n int64, _ []byte) ([]byte, error) {
		return f.produce(off, buf[off:off+n]), nil
	})
	return buf, crc
}

// write writes the file to path through a temporary file renamed into place
// (a GET streaming a previous version keeps its bytes) and returns its CRC.
// Memory use is one segment buffer per CPU.
func (f *modelFile) write(path string) (crc uint64, err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return 0, fmt.Errorf("create %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o644); err != nil {
		return 0, fmt.Errorf("chmod %s: %w", path, err)
	}
	crc, err = parallelCRC(f.fileSize(), func(off, n int64, scratch []byte) ([]byte, error) {
		p := f.produce(off, scratch)
		if _, err := tmp.WriteAt(p, off); err != nil {
			return nil, fmt.Errorf("write %s: %w", path, err)
		}
		return p, nil
	})
	if err != nil {
		return 0, err
	}
	if err := tmp.Close(); err != nil {
		return 0, fmt.Errorf("close %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return 0, fmt.Errorf("rename %s: %w", path, err)
	}
	return crc, nil
}

// GenerateModelFiles is GenerateModel that also returns every file's bytes by its path under
// prefix, and their total size: what a test compares a staged copy with.
func (s *Server) GenerateModelFiles(bucketName, prefix string, spec ModelSpec) (map[string][]byte, int64, error) {
	infos, err := s.GenerateModel(bucketName, prefix, spec)
	if err != nil {
		return nil, 0, err
	}
	files := make(map[string][]byte, len(infos))
	var size int64
	for _, in := range infos {
		b, err := s.ObjectBytes(bucketName, in.Key)
		if err != nil {
			return nil, 0, err
		}
		files[strings.TrimPrefix(in.Key, prefix)] = b
		size += int64(len(b))
	}
	return files, size, nil
}

// ObjectBytes returns the body of the current version of an object.
func (s *Server) ObjectBytes(bucketName, key string) ([]byte, error) {
	o, oerr := s.store.lookup(bucketName, key)
	if oerr != nil {
		return nil, fmt.Errorf("%s/%s: %s", bucketName, key, oerr.code)
	}
	if o.data != nil || o.path == "" {
		return slices.Clone(o.data), nil
	}
	b, err := os.ReadFile(o.path)
	if err != nil {
		return nil, fmt.Errorf("%s/%s: %w", bucketName, key, err)
	}
	return b, nil
}
