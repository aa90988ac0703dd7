package ossemu

import (
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"
)

// This file verifies OSS request signatures (V4 and V1) on the server side.
// It is written independently of the SDK's signer; only the
// canonicalisation rules are shared, as they must be.

// skewLimit is how far a request's date may be from the server's clock.
const skewLimit = 15 * time.Minute

const (
	v4Algorithm  = "OSS4-HMAC-SHA256"
	v4Terminator = "aliyun_v4_request"
	v4Product    = "oss"
	v4DateTime   = "20060102T150405Z"
)

// authenticate checks the request's credentials. With no credentials
// configured every request is allowed.
func (s *Server) authenticate(rq *request) *ossError {
	if len(s.creds) == 0 {
		return nil
	}
	q := rq.query
	if q.Has("x-oss-signature") || q.Has("x-oss-credential") || q.Has("Signature") || q.Has("OSSAccessKeyId") {
		return errAccessDenied("Query-string authentication (presigned URLs) is not supported by ossemu; sign the Authorization header instead.")
	}
	auth := rq.r.Header.Get("Authorization")
	switch {
	case auth == "":
		return s.authorizeAnonymous(rq)
	case strings.HasPrefix(auth, v4Algorithm+" "):
		return s.verifyV4(rq, strings.TrimPrefix(auth, v4Algorithm+" "))
	case strings.HasPrefix(auth, "OSS "):
		return s.verifyV1(rq, strings.TrimPrefix(auth, "OSS "))
	}
	return errInvalidArgument("The Authorization header is invalid: unknown signature scheme.")
}

// authorizeAnonymous allows reads of public-read buckets.
func (s *Server) authorizeAnonymous(rq *request) *ossError {
	switch rq.op {
	case OpGet, OpHead, OpMeta, OpList:
		if _, public := s.store.bucketInfo(rq.bucket); public {
			return nil
		}
	}
	return errAccessDenied("You have no right to access this object because of bucket acl.")
}

// credential finds the access key and checks the STS token it requires.
func (s *Server) credential(rq *request, accessKeyID string) (Credential, *ossError) {
	c, ok := s.creds[accessKeyID]
	if !ok {
		return c, newError(http.StatusForbidden, "InvalidAccessKeyId", "The OSS Access Key Id you provided does not exist in our records.").
			with("OSSAccessKeyId", accessKeyID)
	}
	if c.SecurityToken != "" && rq.r.Header.Get("X-Oss-Security-Token") != c.SecurityToken {
		return c, newError(http.StatusForbidden, "InvalidSecurityToken", "The security token you provided is invalid.")
	}
	return c, nil
}

func checkSkew(t time.Time) *ossError {
	now := time.Now()
	if d := now.Sub(t); d > skewLimit || d < -skewLimit {
		return newError(http.StatusForbidden, "RequestTimeTooSkewed", "The difference between the request time and the current time is too large.").
			with("RequestTime", t.UTC().Format(time.RFC3339)).
			with("ServerTime", now.UTC().Format(time.RFC3339)).
			with("MaxAllowedSkewMilliseconds", fmt.Sprint(skewLimit.Milliseconds()))
	}
	return nil
}

// resourcePath is "/", "/bucket/" or "/bucket/key", unescaped.
func resourcePath(bucket, key string) string {
	if bucket == "" {
		return "/"
	}
	return "/" + bucket + "/" + key
}

// verifyV4 checks an "OSS4-HMAC-SHA256 Credential=...,Signature=..." header.
func (s *Server) verifyV4(rq *request, fields string) *ossError {
	var credential, additional, signature string
	for _, f := range strings.Split(fields, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(f), "=")
		switch k {
		case "Credential":
			credential = v
		case "AdditionalHeaders":
			additional = v
		case "Signature":
			signature = v
		}
	}
	scope := strings.Split(credential, "/")
	if len(scope) != 5 || signature == "" {
		return errInvalidArgument("The Authorization header is invalid: want Credential=<id>/<date>/<region>/oss/aliyun_v4_request and Signature=<hex>.")
	}
	accessKeyID, date, region, product, terminator := scope[0], scope[1], scope[2], scope[3], scope[4]
	if product != v4Product || terminator != v4Terminator {
		return errInvalidArgument(fmt.Sprintf("The credential scope %q is invalid.", strings.Join(scope[1:], "/")))
	}
	cred, e := s.credential(rq, accessKeyID)
	if e != nil {
		return e
	}
	if s.opts.Region != "" && region != s.opts.Region {
		return errSignature(fmt.Sprintf("The signing region %q in the Authorization header is wrong: this endpoint serves region %q.", region, s.opts.Region))
	}
	xdate := rq.r.Header.Get("X-Oss-Date")
	t, err := time.Parse(v4DateTime, xdate)
	if err != nil {
		return errAccessDenied("The x-oss-date header is missing or not in the form 20060102T150405Z.")
	}
	if e := checkSkew(t); e != nil {
		return e
	}
	if date != xdate[:8] {
		return errSignature(fmt.Sprintf("The signing date %q in the Authorization header does not match x-oss-date %q.", date, xdate))
	}
	canonical := canonicalRequestV4(rq, additional)
	stringToSign := v4Algorithm + "\n" + xdate + "\n" + date + "/" + region + "/" + product + "/" + terminator + "\n" + sha256Hex(canonical)
	key := []byte("aliyun_v4" + cred.AccessKeySecret)
	for _, part := range []string{date, region, product, terminator} {
		key = hmacSHA256(key, part)
	}
	want := hex.EncodeToString(hmacSHA256(key, stringToSign))
	if !hmac.Equal([]byte(want), []byte(strings.ToLower(signature))) {
		return errSignature("The request signature we calculated does not match the signature you provided. Check your key and signing method.").
			with("OSSAccessKeyId", accessKeyID).with("CanonicalRequest", canonical).with("StringToSign", stringToSign)
	}
	return nil
}

// canonicalRequestV4 builds the V4 canonical request.
func canonicalRequestV4(rq *request, additional string) string {
	r := rq.r
	var b strings.Builder
	b.WriteString(r.Method + "\n")
	b.WriteString(escapeURIPath(resourcePath(rq.bucket, rq.key)) + "\n")
	b.WriteString(canonicalQueryV4(r.URL.RawQuery) + "\n")

	extra := map[string]bool{}
	for _, h := range strings.Split(additional, ";") {
		if h != "" {
			extra[strings.ToLower(h)] = true
		}
	}
	values := map[string][]string{}
	for k, vs := range r.Header {
		lk := strings.ToLower(k)
		if strings.HasPrefix(lk, "x-oss-") || lk == "content-type" || lk == "content-md5" || extra[lk] {
			values[lk] = append(values[lk], vs...)
		}
	}
	if extra["host"] && len(values["host"]) == 0 {
		values["host"] = []string{r.Host} // net/http moves Host out of the header map
	}
	names := make([]string, 0, len(values))
	for k := range values {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		vs := make([]string, len(values[k]))
		for i, v := range values[k] {
			vs[i] = strings.TrimSpace(v)
		}
		b.WriteString(k + ":" + strings.Join(vs, ",") + "\n")
	}
	b.WriteString("\n")
	b.WriteString(additional + "\n")
	payload := r.Header.Get("X-Oss-Content-Sha256")
	if payload == "" {
		payload = "UNSIGNED-PAYLOAD"
	}
	b.WriteString(payload)
	return b.String()
}

// canonicalQueryV4 sorts the raw (still escaped) query parameters; "+"
// stands for a space and is written %20, a parameter without a value is
// written without "=", and a repeated parameter keeps its last value.
func canonicalQueryV4(raw string) string {
	raw = strings.ReplaceAll(raw, "+", "%20")
	last := map[string]string{}
	var keys []string
	for _, p := range strings.Split(raw, "&") {
		if p == "" {
			continue
		}
		k, v, _ := strings.Cut(p, "=")
		last[k] = v
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(k)
		if v := last[k]; v != "" {
			b.WriteString("=" + v)
		}
	}
	return b.String()
}

// escapeURIPath percent-encodes every byte except unreserved characters
// (RFC 3986) and "/", in upper-case hex.
func escapeURIPath(p string) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		c := p[i]
		if 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' ||
			c == '-' || c == '.' || c == '_' || c == '~' || c == '/' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
	return b.String()
}

// verifyV1 checks an "OSS <id>:<signature>" header.
func (s *Server) verifyV1(rq *request, fields string) *ossError {
	accessKeyID, signature, ok := strings.Cut(fields, ":")
	if !ok || accessKeyID == "" || signature == "" {
		return errInvalidArgument("The Authorization header is invalid: want OSS <AccessKeyId>:<Signature>.")
	}
	cred, e := s.credential(rq, accessKeyID)
	if e != nil {
		return e
	}
	r := rq.r
	date := r.Header.Get("Date")
	t, err := http.ParseTime(date)
	if err != nil {
		return errAccessDenied("The Date header is missing or invalid.")
	}
	if e := checkSkew(t); e != nil {
		return e
	}
	stringToSign := stringToSignV1(rq, date)
	mac := hmac.New(sha1.New, []byte(cred.AccessKeySecret))
	mac.Write([]byte(stringToSign))
	want := base64.StdEncoding.EncodeToString(mac.Sum(nil))
	if !hmac.Equal([]byte(want), []byte(signature)) {
		return errSignature("The request signature we calculated does not match the signature you provided. Check your key and signing method.").
			with("OSSAccessKeyId", accessKeyID).with("StringToSign", stringToSign)
	}
	return nil
}

// stringToSignV1 builds VERB, Content-MD5, Content-Type, Date, the x-oss-
// headers and the resource with its signed sub-resources.
func stringToSignV1(rq *request, date string) string {
	r := rq.r
	var b strings.Builder
	b.WriteString(r.Method + "\n" + r.Header.Get("Content-MD5") + "\n" + r.Header.Get("Content-Type") + "\n" + date + "\n")
	var names []string
	values := map[string][]string{}
	for k, vs := range r.Header {
		lk := strings.ToLower(k)
		if strings.HasPrefix(lk, "x-oss-") {
			if _, seen := values[lk]; !seen {
				names = append(names, lk)
			}
			values[lk] = append(values[lk], vs...)
		}
	}
	sort.Strings(names)
	for _, k := range names {
		vs := make([]string, len(values[k]))
		for i, v := range values[k] {
			vs[i] = strings.TrimSpace(v)
		}
		b.WriteString(k + ":" + strings.Join(vs, ",") + "\n")
	}
	b.WriteString(resourcePath(rq.bucket, rq.key))
	var params []string
	for k := range rq.query {
		if signedParameter(k) || strings.HasPrefix(k, "x-oss-") {
			params = append(params, k)
		}
	}
	sort.Strings(params)
	for i, k := range params {
		if i == 0 {
			b.WriteByte('?')
		} else {
			b.WriteByte('&')
		}
		b.WriteString(k)
		if v := rq.query.Get(k); v != "" {
			b.WriteString("=" + v)
		}
	}
	return b.String()
}

// signedParameter reports whether a query parameter is part of the V1
// canonicalized resource.
func signedParameter(k string) bool {
	switch k {
	case "acl", "bucketInfo", "location", "stat", "delete", "append", "tagging", "objectMeta",
		"uploads", "uploadId", "partNumber", "security-token", "position",
		"response-content-type", "response-content-language", "response-expires",
		"response-cache-control", "response-content-disposition", "response-content-encoding",
		"restore", "callback", "callback-var", "versions", "versioning", "versionId",
		"sequential", "continuation-token", "regionList", "cloudboxes", "symlink":
		return true
	}
	return false
}

func hmacSHA256(key []byte, data string) []byte {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(data))
	return mac.Sum(nil)
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
