// Package ossemu is an Alibaba Cloud OSS emulator for tests, demos and
// benchmarks: a real HTTP server that the unmodified OSS Go SDK v2 talks to.
// Tests start it in-process with Start; the ossemu command runs it as a
// process. It serves multi-GB objects at loopback speed: file-backed
// objects go out with sendfile, in-memory ones without copies.
//
// # Object-store speed
//
// A real object store is slower than loopback in two ways the emulator can
// imitate (Options, SetProfile, the ossemu command's --profile,
// --first-byte-latency and --conn-rate flags):
//
//   - FirstByteLatency: every OSS request (GET, HEAD, LIST, PUT, errors
//     included; not the admin endpoints) waits this long before its status
//     and headers are written, or until the client goes away. Requests wait
//     in parallel, holding no lock.
//   - ConnBytesPerSec: each TCP connection's GetObject bodies are capped at
//     this rate, shared by the keep-alive requests it carries; separate
//     connections each get the whole cap. The token bucket holds at most
//     10 ms of traffic (256 KiB at most), so the cap holds over short
//     intervals. A Server mounted as a plain http.Handler in another
//     http.Server caps each request instead.
//
// The total egress limit (EgressBytesPerSec) applies beside the
// per-connection cap: it models a region with little bandwidth, the cap a
// single connection's speed. ProfileByName names the usual settings:
// "loopback" (none of this, the default) and "object-store" (20 ms,
// 50 MB/s per connection, what OSS gives OSS Connector; see
// ProfileByName). A client then needs many ranged GETs in parallel to go
// fast, as against OSS.
//
// # Implemented subset of the OSS REST API
//
//   - ListObjectsV2 (GET /bucket/?list-type=2): prefix, delimiter, max-keys
//     (1 to 1000, default 100), continuation-token (opaque), start-after,
//     encoding-type=url, fetch-owner; keys in UTF-8 byte order.
//   - HeadObject, GetObjectMeta (HEAD ?objectMeta), and GetObject with
//     Range (bytes=a-b, a-, -n), x-oss-range-behavior: standard,
//     If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since and
//     the response-* header overrides.
//   - PutObject (Content-MD5 and x-oss-content-sha256 verified when sent,
//     x-oss-forbid-overwrite), DeleteObject, PutBucket (x-oss-acl
//     public-read makes a bucket public).
//   - Path-style (/bucket/key) and virtual-hosted (Host: bucket.<domain>)
//     addressing; any host that is an IP address, "localhost" or a name
//     without a dot addresses the service path-style.
//   - Authentication when credentials are configured: V4
//     (OSS4-HMAC-SHA256, header form) and V1 (OSS <id>:<signature>)
//     signatures verified by an implementation independent of the SDK's
//     signer, STS security tokens, a 15-minute clock-skew limit, and
//     anonymous reads of public-read buckets. Errors are OSS's error XML
//     (in the x-oss-err header for HEAD), with x-oss-request-id and x-oss-ec.
//
// Object responses carry the headers the SDK reads: ETag, Last-Modified,
// Content-Length, Content-Type, Accept-Ranges, x-oss-hash-crc64ecma (of the
// whole object, also on ranged responses), x-oss-object-type and
// x-oss-storage-class.
//
// Test controls: an egress limit shared by all GetObject bodies
// (SetEgressRate), the first-byte latency and per-connection cap
// (SetProfile), injected faults (InjectFault: error statuses, a slow
// first byte, truncated or corrupted bodies, connection resets, requests
// never answered, listings that never end, Range headers ignored), counters
// (Stats), and synthetic Hugging-Face-shaped models of any size
// (GenerateModel). With Options.Admin the same controls are served under
// /-/, a path no bucket name can produce:
//
//	GET    /-/stats        Stats as JSON
//	POST   /-/reset-stats  ResetStats
//	POST   /-/faults       InjectFault; body: a Fault as JSON, e.g.
//	                       {"op":"get","kind":"truncate","after":1024,"count":2};
//	                       "delay" is a duration string ("1.5s") or nanoseconds
//	DELETE /-/faults       ClearFaults
//	POST   /-/egress?bps=N SetEgressRate; N as ParseRate reads it ("1Gbit", "0")
//	GET    /-/profile      the current Profile as JSON:
//	                       {"firstByteLatency":"20ms","connRate":"50MB"}
//	POST   /-/profile      SetProfile; body: that JSON, the latency as
//	                       time.ParseDuration reads it, the rate as ParseRate
//	                       ("400Mbit", "0" unlimited); a field left out keeps
//	                       its value
//
// # Deliberate deviations from OSS
//
//   - Everything else (multipart upload, copy, ACL and tagging calls,
//     ListObjects v1, ListBuckets, versioning, presigned URLs) is answered
//     405 MethodNotAllowed, or 403 AccessDenied for query-string signatures.
//   - Objects stored from disk or generated get an ETag derived from their
//     CRC-64 and size ("%016X%016X") instead of an MD5, which would be too
//     slow to compute for multi-GB objects. Simple uploads get OSS's
//     upper-case hex MD5.
//   - A range whose end lies past the object is clamped in both range modes.
//   - EC values imitate OSS's format but are the emulator's own.
//   - The admin endpoints are not authenticated.
package ossemu
