package driver

import (
	"fmt"
	"testing"
	"time"

	"k8s.io/utils/clock"

	"github.com/modelcast/modelcast/pkg/ossclient"
	"github.com/modelcast/modelcast/test/ossemu"
)

// TestManifestsBoundedUnderRotatingCredentials: STS credentials rotate, and each rotation is
// new credentials. The manifests the resolver keeps stay bounded however many rotations
// (one model: one entry with at most maxListers credentials) and however many models (at most
// maxManifests), and the credentials of the last rotation still get the kept manifest without
// asking OSS again.
func TestManifestsBoundedUnderRotatingCredentials(t *testing.T) {
	const keyID, keySecret = "STS.RotatingTestKey", "rotating-secret"
	srv := ossemu.Start(t, ossemu.Options{Region: "cn-test", Credentials: []ossemu.Credential{{AccessKeyID: keyID, AccessKeySecret: keySecret}}})
	srv.CreateBucket("models", ossemu.BucketOptions{})
	srv.PutObject("models", "qwen/model.safetensors", []byte("weights"))
	r := newResolver(ossclient.Config{Endpoint: srv.Endpoint(), Region: "cn-test"}, ossclient.DownloadOptions{}, time.Hour, 0, clock.RealClock{})
	defer r.close()
	uri, err := ossclient.ParseURI("oss://models/qwen/")
	if err != nil {
		t.Fatal(err)
	}
	secrets := func(i int) map[string]string {
		return map[string]string{"akId": keyID, "akSecret": keySecret, "securityToken": fmt.Sprintf("sts-token-%d", i)}
	}
	size := func() (entries, listers int) {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, e := range r.manifests {
			listers += len(e.listers)
		}
		return len(r.manifests), listers
	}

	const rotations = 300
	for i := range rotations {
		if _, _, err := r.model(t.Context(), VolumeSpec{URI: uri}, secrets(i)); err != nil {
			t.Fatalf("rotation %d: %v", i, err)
		}
		if entries, listers := size(); entries > 1 || listers > maxListers {
			t.Fatalf("after %d rotations of one model's credentials: %d entries, %d credentials kept; want 1 and at most %d", i+1, entries, listers, maxListers)
		}
	}
	srv.ResetStats()
	m, _, err := r.model(t.Context(), VolumeSpec{URI: uri}, secrets(rotations-1))
	if err != nil || m.Manifest == nil {
		t.Fatalf("the last credentials again: %v", err)
	}
	if n := srv.Stats().Requests; n[ossemu.OpList]+n[ossemu.OpHead] != 0 {
		t.Errorf("the last credentials listed again within the TTL: %v", n)
	}

	// Many models (tenants are part of where a model is): at most maxManifests kept.
	for i := range maxManifests + 40 {
		if _, _, err := r.model(t.Context(), VolumeSpec{URI: uri, Tenant: fmt.Sprintf("tenant-%d", i)}, secrets(i)); err != nil {
			t.Fatalf("tenant %d: %v", i, err)
		}
	}
	if entries, listers := size(); entries > maxManifests || listers > maxManifests*maxListers {
		t.Errorf("after %d models: %d entries, %d credentials kept; want at most %d entries", maxManifests+40, entries, listers, maxManifests)
	}
}
