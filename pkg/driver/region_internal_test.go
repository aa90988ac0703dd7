package driver

import (
	"testing"
	"time"

	"k8s.io/utils/clock"

	"github.com/modelcast/modelcast/pkg/ossclient"
)

// TestRegionPrecedence: the volume's region, else the one its endpoint names, else the node's.
func TestRegionPrecedence(t *testing.T) {
	node := ossclient.Config{Endpoint: "oss-cn-beijing-internal.aliyuncs.com", Region: "cn-beijing"}
	r := newResolver(node, ossclient.DownloadOptions{}, time.Minute, 0, clock.RealClock{})
	defer r.close()
	for _, tc := range []struct {
		name             string
		endpoint, region string
		want             string
	}{
		{"node defaults", "", "", "cn-beijing"},
		{"the volume's region", "", "cn-shanghai", "cn-shanghai"},
		{"the region the volume's endpoint names", "oss-cn-hangzhou.aliyuncs.com", "", "cn-hangzhou"},
		{"the node's region for an endpoint naming none", "http://10.0.0.5:9000", "", "cn-beijing"},
		{"the volume's region over its endpoint's", "oss-cn-hangzhou.aliyuncs.com", "cn-shanghai", "cn-shanghai"},
	} {
		cfg, err := r.config(VolumeSpec{Endpoint: tc.endpoint, Region: tc.region}, nil)
		if err != nil || cfg.Region != tc.want {
			t.Errorf("%s: region %q, %v; want %q", tc.name, cfg.Region, err, tc.want)
		}
	}
}
