package ossemu

import (
	"bytes"
	"encoding/base64"
	"encoding/xml"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
)

const (
	defaultMaxKeys = 100
	maxMaxKeys     = 1000
	ossTimeFormat  = "2006-01-02T15:04:05.000Z"
)

// listBucketResult is ListObjectsV2's response, elements in OSS's order.
type listBucketResult struct {
	XMLName               xml.Name       `xml:"ListBucketResult"`
	Name                  string         `xml:"Name"`
	Prefix                string         `xml:"Prefix"`
	StartAfter            *string        `xml:"StartAfter,omitempty"`
	ContinuationToken     *string        `xml:"ContinuationToken,omitempty"`
	MaxKeys               int            `xml:"MaxKeys"`
	Delimiter             *string        `xml:"Delimiter,omitempty"`
	EncodingType          *string        `xml:"EncodingType,omitempty"`
	IsTruncated           bool           `xml:"IsTruncated"`
	NextContinuationToken *string        `xml:"NextContinuationToken,omitempty"`
	KeyCount              int            `xml:"KeyCount"`
	Contents              []listEntry    `xml:"Contents"`
	CommonPrefixes        []commonPrefix `xml:"CommonPrefixes"`
}

type listEntry struct {
	Key          string     `xml:"Key"`
	LastModified string     `xml:"LastModified"`
	ETag         string     `xml:"ETag"`
	Type         string     `xml:"Type"`
	Size         int64      `xml:"Size"`
	StorageClass string     `xml:"StorageClass"`
	Owner        *listOwner `xml:"Owner,omitempty"`
}

type listOwner struct {
	ID          string `xml:"ID"`
	DisplayName string `xml:"DisplayName"`
}

type commonPrefix struct {
	Prefix string `xml:"Prefix"`
}

// listParams are ListObjectsV2's query parameters.
type listParams struct {
	prefix, delimiter string
	maxKeys           int
	// after is where the page starts: after this key, or after every key
	// with this prefix when afterPrefix is set.
	after       string
	afterPrefix bool
	urlEncode   bool
	fetchOwner  bool
}

// Continuation tokens are base64url("k" + key) to resume after a key, or
// base64url("p" + prefix) to resume after a common prefix.
func encodeToken(marker string, isPrefix bool) string {
	kind := "k"
	if isPrefix {
		kind = "p"
	}
	return base64.RawURLEncoding.EncodeToString([]byte(kind + marker))
}

func decodeToken(token string) (marker string, isPrefix bool, ok bool) {
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(b) == 0 || (b[0] != 'k' && b[0] != 'p') {
		return "", false, false
	}
	return string(b[1:]), b[0] == 'p', true
}

func parseListParams(q url.Values) (listParams, *ossError) {
	p := listParams{
		prefix:     q.Get("prefix"),
		delimiter:  q.Get("delimiter"),
		maxKeys:    defaultMaxKeys,
		fetchOwner: q.Get("fetch-owner") == "true",
	}
	if q.Has("max-keys") {
		n, err := strconv.Atoi(q.Get("max-keys"))
		if err != nil || n < 1 || n > maxMaxKeys {
			return p, errInvalidArgument("Argument max-keys must be an integer between 1 and 1000.").
				with("ArgumentName", "max-keys").with("ArgumentValue", q.Get("max-keys"))
		}
		p.maxKeys = n
	}
	switch enc := q.Get("encoding-type"); enc {
	case "":
	case "url":
		p.urlEncode = true
	default:
		return p, errInvalidArgument("Argument encoding-type must be url.").
			with("ArgumentName", "encoding-type").with("ArgumentValue", enc)
	}
	if q.Has("continuation-token") {
		marker, isPrefix, ok := decodeToken(q.Get("continuation-token"))
		if !ok {
			return p, errInvalidArgument("The continuation token is invalid.").
				with("ArgumentName", "continuation-token").with("ArgumentValue", q.Get("continuation-token"))
		}
		p.after, p.afterPrefix = marker, isPrefix
	} else {
		p.after = q.Get("start-after")
	}
	return p, nil
}

// listObjects serves ListObjectsV2.
func (s *Server) listObjects(rq *request) {
	p, e := parseListParams(rq.query)
	if e != nil {
		s.writeError(rq, e)
		return
	}
	res, e := s.store.list(rq.bucket, p)
	if e != nil {
		s.writeError(rq, e)
		return
	}
	enc := func(v string) string {
		if p.urlEncode {
			return url.QueryEscape(v)
		}
		return v
	}
	optional := func(name string) *string {
		if !rq.query.Has(name) {
			return nil
		}
		v := enc(rq.query.Get(name))
		return &v
	}
	out := listBucketResult{
		Name:              rq.bucket,
		Prefix:            enc(p.prefix),
		StartAfter:        optional("start-after"),
		ContinuationToken: optional("continuation-token"),
		MaxKeys:           p.maxKeys,
		Delimiter:         optional("delimiter"),
		EncodingType:      optional("encoding-type"),
		IsTruncated:       res.truncated,
		KeyCount:          len(res.objects) + len(res.prefixes),
	}
	switch {
	case rq.endlessList:
		// FaultEndlessList: the page claims more and points back at itself.
		out.IsTruncated = true
		out.NextContinuationToken = optional("continuation-token")
	case res.truncated:
		t := enc(encodeToken(res.last, res.lastIsPrefix))
		out.NextContinuationToken = &t
	}
	for _, o := range res.objects {
		entry := listEntry{
			Key:          enc(o.key),
			LastModified: o.modTime.UTC().Format(ossTimeFormat),
			ETag:         o.etag,
			Type:         "Normal",
			Size:         o.size,
			StorageClass: "Standard",
		}
		if p.fetchOwner {
			entry.Owner = &listOwner{ID: "ossemu", DisplayName: "ossemu"}
		}
		out.Contents = append(out.Contents, entry)
	}
	for _, cp := range res.prefixes {
		out.CommonPrefixes = append(out.CommonPrefixes, commonPrefix{Prefix: enc(cp)})
	}
	var b bytes.Buffer
	b.WriteString(xml.Header)
	if err := xml.NewEncoder(&b).Encode(out); err != nil {
		s.writeError(rq, errInternal("The listing cannot be encoded: "+err.Error()))
		return
	}
	h := rq.w.Header()
	h.Set("Content-Type", "application/xml")
	h.Set("Content-Length", strconv.Itoa(b.Len()))
	rq.writeHeader(http.StatusOK)
	n, _ := rq.w.Write(b.Bytes())
	rq.written += int64(n)
}

// listResult is one page of a listing.
type listResult struct {
	objects   []*object
	prefixes  []string
	truncated bool
	// last is the page's last entry, where the next page resumes.
	last         string
	lastIsPrefix bool
}

// list returns one page. Keys are kept sorted, so a page costs a binary
// search plus the entries it returns (and one binary search per common
// prefix to skip the keys it groups); keys are sorted again only after
// out-of-order puts or deletes.
func (st *store) list(bucketName string, p listParams) (listResult, *ossError) {
	st.mu.RLock()
	if b, ok := st.buckets[bucketName]; ok && b.sorted {
		defer st.mu.RUnlock()
		return listPage(b.keys, b.objects, p), nil
	}
	st.mu.RUnlock()
	st.mu.Lock()
	defer st.mu.Unlock()
	b, ok := st.buckets[bucketName]
	if !ok {
		return listResult{}, errNoSuchBucket(bucketName)
	}
	b.sortKeys()
	return listPage(b.keys, b.objects, p), nil
}

func listPage(keys []string, objects map[string]*object, p listParams) listResult {
	var res listResult
	i := sort.SearchStrings(keys, p.prefix)
	if p.after != "" {
		var j int
		if p.afterPrefix {
			j = skipPrefix(keys, p.after)
		} else {
			j = sort.Search(len(keys), func(n int) bool { return keys[n] > p.after })
		}
		i = max(i, j)
	}
	count := 0
	for i < len(keys) && strings.HasPrefix(keys[i], p.prefix) {
		if count == p.maxKeys {
			res.truncated = true
			break
		}
		k := keys[i]
		if p.delimiter != "" {
			if d := strings.Index(k[len(p.prefix):], p.delimiter); d >= 0 {
				cp := k[:len(p.prefix)+d+len(p.delimiter)]
				res.prefixes = append(res.prefixes, cp)
				res.last, res.lastIsPrefix = cp, true
				i = skipPrefix(keys, cp)
				count++
				continue
			}
		}
		res.objects = append(res.objects, objects[k])
		res.last, res.lastIsPrefix = k, false
		i++
		count++
	}
	return res
}

// skipPrefix returns the index of the first key after every key that starts
// with prefix (those are contiguous in sorted order).
func skipPrefix(keys []string, prefix string) int {
	return sort.Search(len(keys), func(n int) bool {
		return keys[n] > prefix && !strings.HasPrefix(keys[n], prefix)
	})
}
