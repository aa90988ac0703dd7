package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/modelcast/modelcast/pkg/ossclient"
)

// Model is one version of a model: where it lives and the manifest that pins its bytes.
type Model struct {
	Endpoint string
	Manifest *ossclient.Manifest
	// Lister, when set, names who listed the manifest: an opaque token (the driver's digest of
	// the credentials). The store keeps it with the model, so that Find hands a staged model
	// without OSS only to someone who could list it before. It is not part of the key.
	Lister string
}

// Key identifies the model on this node: a hash of the endpoint, bucket, prefix and manifest
// fingerprint. Same objects at the same place ⇒ same key; any change ⇒ another key.
func (m Model) Key() string {
	h := sha256.New()
	for _, s := range []string{m.Endpoint, m.Manifest.Bucket, m.Manifest.Prefix, m.Manifest.Fingerprint()} {
		fmt.Fprintf(h, "%d:%s", len(s), s)
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// String is the model's oss:// path.
func (m Model) String() string { return m.Manifest.URI().String() }

// Progress of a staging, as a Source reports it.
type Progress struct {
	Done, Total int64
	// FromOSS and FromPeers are the bytes received so far by source (a chain head that takes
	// over may read a few bytes again, so they can add up to more than Done).
	FromOSS, FromPeers int64
	// From says where the bytes come from now, for people: "OSS (position 1 of 8, chain
	// head)", "node gpu-7 (position 3 of 8)".
	From string
}

// Source fetches a model's bytes into dir, verified: when Fetch returns nil, every file under
// dir holds exactly the manifest's bytes. report is called as bytes arrive (often; it must be
// cheap).
type Source interface {
	Fetch(ctx context.Context, m Model, dir string, report func(Progress)) error
}

// OSSSource fetches models straight from OSS with the parallel verified download.
type OSSSource struct {
	Client  *ossclient.Client
	Options ossclient.DownloadOptions
}

// Describe says where the bytes come from.
func (OSSSource) Describe() string { return "OSS" }

// Fetch implements Source.
func (s OSSSource) Fetch(ctx context.Context, m Model, dir string, report func(Progress)) error {
	opts := s.Options
	opts.Progress = func(p ossclient.Progress) {
		report(Progress{Done: p.Done, Total: p.Total, FromOSS: p.Done, From: "OSS"})
	}
	return s.Client.Download(ctx, m.Manifest, dir, opts)
}
