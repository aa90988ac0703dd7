package ossclient

import (
	"errors"
	"hash/crc64"
	"testing"
)

func TestLayout(t *testing.T) {
	m, err := NewManifest("models", "m/", []Object{
		{Key: "m/a", Size: 10},
		{Key: "m/b", Size: 0},
		{Key: "m/c", Size: 4},
		{Key: "m/d", Size: 8},
	})
	if err != nil {
		t.Fatal(err)
	}
	l := NewLayout(m, 4)
	want := []Chunk{
		{Object: 0, Offset: 0, Size: 4, Start: 0}, {Object: 0, Offset: 4, Size: 4, Start: 4}, {Object: 0, Offset: 8, Size: 2, Start: 8},
		{Object: 2, Offset: 0, Size: 4, Start: 10},
		{Object: 3, Offset: 0, Size: 4, Start: 14}, {Object: 3, Offset: 4, Size: 4, Start: 18},
	}
	if l.Len() != len(want) {
		t.Fatalf("%d chunks, want %d", l.Len(), len(want))
	}
	for i, c := range want {
		if l.Chunk(i) != c {
			t.Errorf("chunk %d = %+v, want %+v", i, l.Chunk(i), c)
		}
	}
	for o, fe := range [][2]int{{0, 3}, {3, 3}, {3, 4}, {4, 6}} {
		if f, e := l.ObjectChunks(o); f != fe[0] || e != fe[1] {
			t.Errorf("object %d chunks [%d,%d), want %v", o, f, e, fe)
		}
	}
	for off, want := range map[int64][2]int64{0: {0, 0}, 3: {0, 3}, 4: {1, 0}, 9: {2, 1}, 10: {3, 0}, 21: {5, 3}, 22: {6, 0}} {
		if c, w := l.Locate(off); c != int(want[0]) || w != want[1] {
			t.Errorf("Locate(%d) = %d, %d; want %v", off, c, w, want)
		}
	}
	if NewLayout(m, 0).ChunkSize() != DefaultChunkSize {
		t.Errorf("default chunk size")
	}
}

func TestLayoutVerifyObject(t *testing.T) {
	data := []byte("0123456789")
	tab := crc64.MakeTable(crc64.ECMA)
	m, _ := NewManifest("models", "m/", []Object{{Key: "m/a", Size: 10, CRC64: crc64.Checksum(data, tab)}})
	l := NewLayout(m, 3)
	crcs := func(i int) uint64 {
		c := l.Chunk(i)
		return crc64.Checksum(data[c.Offset:c.Offset+c.Size], tab)
	}
	if err := l.VerifyObject(0, crcs); err != nil {
		t.Errorf("right CRCs: %v", err)
	}
	wrong := func(i int) uint64 { return crcs(i) ^ uint64(i/3) }
	if err := l.VerifyObject(0, wrong); !errors.Is(err, ErrIntegrity) {
		t.Errorf("a wrong chunk CRC: %v, want ErrIntegrity", err)
	}
}
