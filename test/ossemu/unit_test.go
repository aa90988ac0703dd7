package ossemu

import (
	"bytes"
	"hash/crc64"
	"testing"
)

func TestCRC64Combine(t *testing.T) {
	tab := crc64.MakeTable(crc64.ECMA)
	data := pseudoRandom(100_000, 9)
	for _, split := range []int{0, 1, 7, 8, 4096, 99_999, 100_000} {
		a, b := data[:split], data[split:]
		got := crc64Combine(crc64.Checksum(a, tab), crc64.Checksum(b, tab), int64(len(b)))
		if want := crc64.Checksum(data, tab); got != want {
			t.Errorf("split %d: %x, want %x", split, got, want)
		}
	}
	if got, want := crc64ECMA(crc64ECMA(0, data[:10]), data[10:]), crc64.Checksum(data, tab); got != want {
		t.Errorf("crc64ECMA chained = %x, want %x", got, want)
	}
}

func TestParallelCRC(t *testing.T) {
	tab := crc64.MakeTable(crc64.ECMA)
	for _, size := range []int{0, 1, segmentSize - 1, segmentSize, 2*segmentSize + 3} {
		data := pseudoRandom(size, 10)
		got, err := crcReaderAt(bytes.NewReader(data), int64(size))
		if want := crc64.Checksum(data, tab); err != nil || got != want {
			t.Errorf("size %d: %x, %v; want %x", size, got, err, want)
		}
	}
	if _, err := crcReaderAt(bytes.NewReader(make([]byte, 10)), 20); err == nil {
		t.Error("a short reader did not fail")
	}
}

func TestFillRandomOffsets(t *testing.T) {
	whole := make([]byte, 1001)
	fillRandom(42, 0, whole)
	part := make([]byte, 201)
	fillRandom(42, 800, part)
	if !bytes.Equal(part, whole[800:]) {
		t.Error("a stream segment differs from the same bytes of the whole stream")
	}
}

func TestParseRange(t *testing.T) {
	for _, tc := range []struct {
		spec        string
		standard    bool
		size        int64
		start, n    int64
		partial, ok bool
	}{
		{"", false, 10, 0, 10, false, true},
		{"bytes=2-4", false, 10, 2, 3, true, true},
		{"bytes=2-", false, 10, 2, 8, true, true},
		{"bytes=-3", false, 10, 7, 3, true, true},
		{"bytes=-0", false, 10, 0, 10, false, true},
		{"bytes=8-100", true, 10, 8, 2, true, true},
		{"bytes=10-", false, 10, 0, 10, false, true},
		{"bytes=10-", true, 10, 0, 0, false, false},
		{"bytes=0-0", false, 0, 0, 0, false, true},
		{"bytes=0-0", true, 0, 0, 0, false, false},
		{"bytes=-5", true, 0, 0, 0, false, false},
		{"bytes=+1-2", false, 10, 0, 10, false, true},
		{"bytes=1-2,4-5", false, 10, 0, 10, false, true},
		{"bytes=5-2", true, 10, 0, 10, false, true},
	} {
		start, n, partial, ok := parseRange(tc.spec, tc.standard, tc.size)
		if start != tc.start || n != tc.n || partial != tc.partial || ok != tc.ok {
			t.Errorf("parseRange(%q, %v, %d) = %d %d %v %v, want %d %d %v %v", tc.spec, tc.standard, tc.size,
				start, n, partial, ok, tc.start, tc.n, tc.partial, tc.ok)
		}
	}
}

func TestParseSizeAndRate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"1048576", 1 << 20}, {"256MiB", 256 << 20}, {"1GiB", 1 << 30}, {"1.5GiB", 3 << 29},
		{"125MB", 125e6}, {"4gib", 4 << 30}, {"10 KiB", 10 << 10}, {"2Ti", 2 << 40},
	} {
		if got, err := ParseSize(tc.in); err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "GiB", "-1", "1XB", "1GiBit"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) succeeded", in)
		}
	}
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"125MB", 125e6}, {"1Gbit", 125e6}, {"1Gbps", 125e6}, {"100Mbit", 12.5e6}, {"125MB/s", 125e6},
		{"8bit", 1}, {"0", 0}, {"16MiB", 16 << 20},
	} {
		if got, err := ParseRate(tc.in); err != nil || got != tc.want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"fast", "1Qbit", "1Q"} {
		if _, err := ParseRate(in); err == nil {
			t.Errorf("ParseRate(%q) succeeded", in)
		}
	}
}

func TestVirtualHostBucket(t *testing.T) {
	for host, want := range map[string]string{
		"127.0.0.1:9000":                      "",
		"[::1]:9000":                          "",
		"localhost:9000":                      "",
		"localhost":                           "",
		"ossemu:9000":                         "",
		"my-bucket.localhost:9000":            "my-bucket",
		"bkt.oss-cn-hangzhou.aliyuncs.com":    "bkt",
		"bkt.oss-cn-hangzhou.emulator.test:1": "bkt",
	} {
		if got := virtualHostBucket(host); got != want {
			t.Errorf("virtualHostBucket(%q) = %q, want %q", host, got, want)
		}
	}
}
