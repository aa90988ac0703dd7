package ossemu

import (
	"net"
	"net/http"
	"net/url"
	"strings"
)

// virtualHostBucket returns the bucket named by a virtual-hosted Host
// header ("bucket.<anything>"), or "" for IP addresses, localhost and
// names without a dot, which address the service (path style).
func virtualHostBucket(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if host == "localhost" || net.ParseIP(host) != nil {
		return ""
	}
	bucket, _, ok := strings.Cut(host, ".")
	if !ok {
		return ""
	}
	return bucket
}

// target extracts the bucket and key of a request from its Host and its
// decoded path.
func target(r *http.Request) (bucket, key string) {
	p := strings.TrimPrefix(r.URL.Path, "/")
	if b := virtualHostBucket(r.Host); b != "" {
		return b, p
	}
	bucket, key, _ = strings.Cut(p, "/")
	return bucket, key
}

func isAdminRequest(r *http.Request) bool {
	return strings.HasPrefix(r.URL.Path, "/-/") && virtualHostBucket(r.Host) == ""
}

type handler func(*request)

// route classifies the request (rq.op) and picks its handler.
func (s *Server) route(rq *request) handler {
	method := rq.r.Method
	rq.op = OpOther
	unsupported := func(message string) handler {
		return func(rq *request) {
			s.writeError(rq, errMethodNotAllowed(message))
		}
	}
	notImplemented := func(what string) handler { return unsupported(what + " is not implemented by ossemu.") }
	switch {
	case rq.bucket == "":
		return notImplemented("The service-level operation " + method + " /")
	case rq.key != "":
		if sub := unsupportedSubresource(rq.query, "objectMeta"); sub != "" {
			return notImplemented("The object operation " + method + " ?" + sub)
		}
		switch method {
		case http.MethodGet:
			rq.op = OpGet
			return s.getObject
		case http.MethodHead:
			rq.op = OpHead
			if rq.query.Has("objectMeta") {
				rq.op = OpMeta
			}
			return s.getObject
		case http.MethodPut:
			if rq.r.Header.Get("X-Oss-Copy-Source") != "" {
				return notImplemented("CopyObject")
			}
			rq.op = OpPut
			return s.putObject
		case http.MethodDelete:
			return s.deleteObject
		}
		return notImplemented("The object operation " + method)
	}
	if sub := unsupportedSubresource(rq.query); sub != "" {
		return notImplemented("The bucket operation " + method + " ?" + sub)
	}
	switch {
	case method == http.MethodGet && rq.query.Get("list-type") == "2":
		rq.op = OpList
		return s.listObjects
	case method == http.MethodGet:
		return unsupported("ListObjects (v1) is not implemented by ossemu; use ListObjectsV2 (list-type=2).")
	case method == http.MethodPut:
		return s.putBucket
	}
	return notImplemented("The bucket operation " + method)
}

// unsupportedSubresource returns the first query parameter that names an
// OSS sub-resource (an operation other than the plain one) not in allowed.
func unsupportedSubresource(q url.Values, allowed ...string) string {
	for k := range q {
		if !isSubresource(k) {
			continue
		}
		ok := false
		for _, a := range allowed {
			ok = ok || a == k
		}
		if !ok {
			return k
		}
	}
	return ""
}

func isSubresource(k string) bool {
	if signedParameter(k) {
		switch {
		case strings.HasPrefix(k, "response-"), k == "continuation-token", k == "security-token":
			return false // modifiers, not operations
		}
		return true
	}
	switch k {
	case "x-oss-process", "x-oss-async-process", "policy", "lifecycle", "cors", "website", "referer",
		"logging", "encryption", "worm", "replication", "inventory", "requestPayment", "qos":
		return true
	}
	return false
}
