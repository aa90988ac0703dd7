package ossemu

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/aliyun/alibabacloud-oss-go-sdk-v2/oss"
)

// listAll lists with the SDK's paginator and returns keys, common prefixes
// and page sizes.
func listAll(t *testing.T, c *oss.Client, req *oss.ListObjectsV2Request) (keys, prefixes []string, pages []int) {
	t.Helper()
	p := c.NewListObjectsV2Paginator(req)
	for p.HasNext() {
		page, err := p.NextPage(ctxT(t))
		if err != nil {
			t.Fatalf("list page %d: %v", len(pages)+1, err)
		}
		if page.KeyCount != len(page.Contents)+len(page.CommonPrefixes) {
			t.Errorf("KeyCount = %d, want %d", page.KeyCount, len(page.Contents)+len(page.CommonPrefixes))
		}
		if page.IsTruncated != (page.NextContinuationToken != nil) {
			t.Errorf("IsTruncated = %v with NextContinuationToken %v", page.IsTruncated, page.NextContinuationToken)
		}
		for _, o := range page.Contents {
			keys = append(keys, oss.ToString(o.Key))
		}
		for _, cp := range page.CommonPrefixes {
			prefixes = append(prefixes, oss.ToString(cp.Prefix))
		}
		pages = append(pages, page.KeyCount)
	}
	return keys, prefixes, pages
}

func TestListPagination(t *testing.T) {
	srv := Start(t, Options{Credentials: []Credential{testCred}})
	var want []string
	for i := range 2500 {
		want = append(want, fmt.Sprintf("data/%05d.bin", i))
	}
	shuffled := slices.Clone(want)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	infos := map[string]ObjectInfo{}
	for _, k := range shuffled { // out of order: the bucket must sort
		infos[k] = srv.PutObject("bkt", k, []byte(k))
	}
	srv.PutObject("bkt", "other/x", nil)
	c := newClient(srv, withKeys(testAK, testSK))

	keys, _, pages := listAll(t, c, &oss.ListObjectsV2Request{Bucket: oss.Ptr("bkt"), Prefix: oss.Ptr("data/"), MaxKeys: 1000})
	if !slices.Equal(pages, []int{1000, 1000, 500}) {
		t.Errorf("page sizes = %v, want [1000 1000 500]", pages)
	}
	if !slices.Equal(keys, want) {
		t.Errorf("listed %d keys, want the %d put, in order", len(keys), len(want))
	}

	// Default page size, start-after, and the object fields.
	res, err := c.ListObjectsV2(ctxT(t), &oss.ListObjectsV2Request{Bucket: oss.Ptr("bkt"), StartAfter: oss.Ptr("data/02450.bin"), FetchOwner: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.MaxKeys != 100 || len(res.Contents) != 50 || res.IsTruncated {
		t.Fatalf("start-after page: MaxKeys %d, %d keys, truncated %v; want 100, 50, false", res.MaxKeys, len(res.Contents), res.IsTruncated)
	}
	first := res.Contents[0]
	info := infos["data/02451.bin"]
	if oss.ToString(first.Key) != info.Key || first.Size != info.Size || oss.ToString(first.ETag) != info.ETag ||
		oss.ToString(first.StorageClass) != "Standard" || oss.ToString(first.Type) != "Normal" ||
		first.Owner == nil || first.LastModified == nil || !first.LastModified.Equal(info.LastModified) {
		t.Errorf("first entry = %+v, want %+v", first, info)
	}
	if oss.ToString(res.StartAfter) != "data/02450.bin" {
		t.Errorf("StartAfter = %v", oss.ToString(res.StartAfter))
	}
}

func TestListDelimiter(t *testing.T) {
	srv := Start(t, Options{})
	for _, k := range []string{"a/1", "a/2", "a/b/3", "b/x/1", "b/y", "c", "d/", "e"} {
		srv.PutObject("bkt", k, nil)
	}
	c := newClient(srv)
	for _, tc := range []struct {
		prefix       string
		maxKeys      int32
		wantKeys     []string
		wantPrefixes []string
	}{
		{"", 0, []string{"c", "e"}, []string{"a/", "b/", "d/"}},
		{"", 1, []string{"c", "e"}, []string{"a/", "b/", "d/"}}, // pages end on common prefixes
		{"a/", 0, []string{"a/1", "a/2"}, []string{"a/b/"}},
		{"b/", 1, []string{"b/y"}, []string{"b/x/"}},
		{"d/", 0, []string{"d/"}, nil},
		{"zz", 0, nil, nil},
	} {
		t.Run(fmt.Sprintf("%q/%d", tc.prefix, tc.maxKeys), func(t *testing.T) {
			keys, prefixes, _ := listAll(t, c, &oss.ListObjectsV2Request{
				Bucket: oss.Ptr("bkt"), Prefix: oss.Ptr(tc.prefix), Delimiter: oss.Ptr("/"), MaxKeys: tc.maxKeys,
			})
			if !slices.Equal(keys, tc.wantKeys) || !slices.Equal(prefixes, tc.wantPrefixes) {
				t.Errorf("keys %q prefixes %q, want %q %q", keys, prefixes, tc.wantKeys, tc.wantPrefixes)
			}
		})
	}
}

func TestListSpecialKeys(t *testing.T) {
	srv := Start(t, Options{Credentials: []Credential{testCred}})
	want := []string{
		"dir with space/file name.txt",
		"plus+sign/a+b",
		"percent%/100%25",
		"unicode/模型/权重.bin",
		"unicode/émoji-🙂",
		"mixed/&=;,:@$!*'()[]~",
		"tab\tand\nnewline",
	}
	for _, k := range want {
		srv.PutObject("bkt", k, []byte(k))
	}
	slices.Sort(want)
	for _, sig := range []struct {
		name string
		opt  func(*oss.Config)
	}{{"v4", withKeys(testAK, testSK)}, {"v1", withV1()}} {
		t.Run(sig.name, func(t *testing.T) {
			c := newClient(srv, withKeys(testAK, testSK), sig.opt)
			keys, _, _ := listAll(t, c, &oss.ListObjectsV2Request{Bucket: oss.Ptr("bkt"), MaxKeys: 2})
			if !slices.Equal(keys, want) {
				t.Errorf("keys = %q, want %q", keys, want)
			}
			for _, k := range want {
				if got, _ := getBytes(t, c, "bkt", k); string(got) != k {
					t.Errorf("GetObject %q = %q", k, got)
				}
				keys, _, _ := listAll(t, c, &oss.ListObjectsV2Request{Bucket: oss.Ptr("bkt"), Prefix: oss.Ptr(k)})
				if !slices.Equal(keys, []string{k}) {
					t.Errorf("list prefix %q = %q", k, keys)
				}
			}
		})
	}

	// encoding-type=url escapes as url.QueryEscape: "+" as %2B.
	open := Start(t, Options{})
	open.PutObject("bkt", "a+b c", nil)
	resp, body, err := rawRequest(t, open, http.MethodGet, "/bkt/?list-type=2&encoding-type=url&prefix=a%2B", nil, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("list: %v %v", resp, err)
	}
	for _, want := range []string{"<Key>a%2Bb+c</Key>", "<Prefix>a%2B</Prefix>", "<EncodingType>url</EncodingType>"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("listing lacks %s:\n%s", want, body)
		}
	}
}

func TestListErrors(t *testing.T) {
	srv := Start(t, Options{})
	srv.CreateBucket("bkt", BucketOptions{})
	c := newClient(srv)
	_, err := c.ListObjectsV2(ctxT(t), &oss.ListObjectsV2Request{Bucket: oss.Ptr("nope")})
	wantServiceError(t, err, http.StatusNotFound, "NoSuchBucket")
	_, err = c.ListObjectsV2(ctxT(t), &oss.ListObjectsV2Request{Bucket: oss.Ptr("bkt"), MaxKeys: 1001})
	wantServiceError(t, err, http.StatusBadRequest, "InvalidArgument")
	_, err = c.ListObjectsV2(ctxT(t), &oss.ListObjectsV2Request{Bucket: oss.Ptr("bkt"), ContinuationToken: oss.Ptr("!!")})
	wantServiceError(t, err, http.StatusBadRequest, "InvalidArgument")
	res, err := c.ListObjectsV2(ctxT(t), &oss.ListObjectsV2Request{Bucket: oss.Ptr("bkt")})
	if err != nil || res.KeyCount != 0 || res.IsTruncated {
		t.Errorf("empty bucket: %+v, %v", res, err)
	}
}

// TestListLarge checks that listing stays cheap with many keys and that
// puts and deletes between pages are seen.
func TestListLarge(t *testing.T) {
	srv := Start(t, Options{})
	const n = 20000
	for i := range n {
		srv.PutObject("bkt", fmt.Sprintf("k/%06d", (i*7919)%n), nil) // out of order
	}
	c := newClient(srv)
	p := c.NewListObjectsV2Paginator(&oss.ListObjectsV2Request{Bucket: oss.Ptr("bkt"), MaxKeys: 1000})
	var count int
	last := ""
	for p.HasNext() {
		page, err := p.NextPage(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range page.Contents {
			if k := oss.ToString(o.Key); k <= last {
				t.Fatalf("key %q after %q", k, last)
			} else {
				last = k
			}
			count++
		}
		if count == 5000 { // mutate mid-listing: before and after the position
			srv.DeleteObject("bkt", "k/000000")
			srv.DeleteObject("bkt", "k/019999")
			srv.PutObject("bkt", "k/0100000", nil)
		}
	}
	// k/000000 was listed before its deletion, k/019999 deleted before its
	// turn, k/0100000 added ahead of the position.
	if want := n; count != want {
		t.Errorf("listed %d keys, want %d", count, want)
	}
}
