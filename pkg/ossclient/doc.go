// Package ossclient reads AI models out of Alibaba Cloud OSS, fast and verified.
//
// It is a narrow layer over the official SDK (github.com/aliyun/alibabacloud-oss-go-sdk-v2):
//
//   - ParseURI validates an oss://bucket/prefix/ model path;
//   - Config carries the endpoint, region, signing version and credentials (explicit, or from the
//     OSS_* environment variables of OSS Connector), and never prints a secret;
//   - Client.Manifest lists every object of a model and pins its size, ETag and CRC-64;
//   - Client.Download fetches a manifest into preallocated files with many parallel ranged GETs,
//     resuming interrupted parts, pinning every request to the manifest's ETag (If-Match) and
//     checking every object's CRC-64 in-line by combining the CRCs of its parts.
//
// Errors carry sentinels (ErrNotFound, ErrAccessDenied, ErrChanged, ErrIntegrity, …) so callers
// map them without looking at the SDK's types or at message text.
package ossclient
