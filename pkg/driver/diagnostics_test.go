package driver_test

import (
	"context"
	"net"
	"regexp"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/modelcast/modelcast/pkg/driver"
	"github.com/modelcast/modelcast/test/ossemu"
)

// endpointURL is an OSS endpoint given as it is (one that no emulator serves).
type endpointURL string

func (e endpointURL) endpoint() string { return string(e) }

// publishErr publishes req and returns the error's code and message.
func publishErr(t *testing.T, p *plugin, req *csi.NodePublishVolumeRequest) (codes.Code, string) {
	t.Helper()
	_, err := p.node.NodePublishVolume(t.Context(), req)
	return status.Code(err), status.Convert(err).Message()
}

// TestNoRoomMessageReadsRight: a model that cannot fit is refused with sizes that read right
// at their scale, in the units pod Events use ("needs 3.1 MB", not "needs 0.0 GB"), and the
// default reserve of 1 GB reads "1.0 GB" (it was 2^30 bytes, printed "1.1 GB").
func TestNoRoomMessageReadsRight(t *testing.T) {
	srv := emu(t)
	genModel(t, srv, "qwen/", 3<<20)
	p := startPlugin(t, inProcess{srv}, "", withOptions(func(o *driver.Options) { o.Config.Cache.TmpfsSize = "1m" }))
	code, msg := publishErr(t, p, publishReq("oss://models/qwen/", target(t, "pod-a")))
	if code != codes.ResourceExhausted {
		t.Fatalf("code %v (%s), want ResourceExhausted", code, msg)
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`^not enough room for the model: oss://models/qwen/ needs 3\.1 MB; the cache tmpfs has \d+(\.\d)? [kM]?B free of 1\.0 MB `),
		regexp.MustCompile(`\(keeping 1\.0 GB in reserve\)`),
		regexp.MustCompile(`; 0 B of cached models are in use$`),
	} {
		if !want.MatchString(msg) {
			t.Errorf("message %q does not match %s", msg, want)
		}
	}
	if strings.Contains(msg, "0.0 GB") {
		t.Errorf("message %q rounds a size to 0.0 GB", msg)
	}
}

// TestCreateVolumeRefusedCredentials: CreateVolume with credentials of the provisioner secret
// that OSS refuses fails with PermissionDenied naming the secret and the key (masked), never a
// secret value; without credentials the size stays unknown, as before.
func TestCreateVolumeRefusedCredentials(t *testing.T) {
	srv := emu(t)
	genModel(t, srv, "qwen/", 1<<20)
	p := startPlugin(t, inProcess{srv}, "")
	params := map[string]string{"ossPath": "oss://models/qwen/"}
	for _, tc := range []struct {
		name    string
		secrets map[string]string
		ossCode string
	}{
		{"wrong secret", map[string]string{"akId": ak, "akSecret": "not-the-secret-value"}, "SignatureDoesNotMatch"},
		{"unknown key", map[string]string{"akId": "LTAI5tNoSuchKeyAnywhere", "akSecret": sk}, "InvalidAccessKeyId"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := createReq("pvc-"+strings.ReplaceAll(tc.name, " ", "-"), params, 1)
			req.Secrets = tc.secrets
			res, err := p.controller.CreateVolume(t.Context(), req)
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("CreateVolume = %v, %v; want PermissionDenied", res, err)
			}
			msg := status.Convert(err).Message()
			want := "the credentials of the provisioner secret (csi.storage.k8s.io/provisioner-secret-name in the StorageClass), access key " +
				tc.secrets["akId"][:4] + "…" + tc.secrets["akId"][len(tc.secrets["akId"])-4:] +
				", were refused by OSS: list oss://models/qwen/: access denied (HTTP 403 " + tc.ossCode
			if !strings.HasPrefix(msg, want) {
				t.Errorf("message %q\nwant it to start with %q", msg, want)
			}
			for _, secret := range []string{tc.secrets["akSecret"], tc.secrets["akId"]} {
				if strings.Contains(msg, secret) {
					t.Errorf("message %q reveals %q", msg, secret)
				}
			}
		})
	}
	anon := createReq("pvc-anonymous", params, 1)
	anon.Secrets = nil
	if res, err := p.controller.CreateVolume(t.Context(), anon); err != nil || res.GetVolume().GetCapacityBytes() != 0 {
		t.Errorf("without credentials: %v, %v; want capacity 0 (unknown)", res, err)
	}
}

// TestServerIgnoringRange: a server that answers ranged GETs with 200 and the whole object is
// said to ignore Range (FailedPrecondition), not to hold a model that changed (Aborted).
func TestServerIgnoringRange(t *testing.T) {
	srv := emu(t)
	genModel(t, srv, "qwen/", 24<<20) // a shard longer than a part (8 MiB): ranged GETs
	p := startPlugin(t, inProcess{srv}, "")
	srv.InjectFault(ossemu.Fault{Op: ossemu.OpGet, Kind: ossemu.FaultIgnoreRange, Count: -1})
	code, msg := publishErr(t, p, publishReq("oss://models/qwen/", target(t, "pod-a")))
	want := regexp.MustCompile(`get oss://models/qwen/model-00001-of-00001\.safetensors: the server ignored the Range header: asked for bytes \d+-\d+ of \d+, got HTTP 200 with \d+ bytes instead of 206 Partial Content \(a proxy between this node and OSS may drop the header\)`)
	if code != codes.FailedPrecondition || !want.MatchString(msg) || strings.Contains(msg, "changed") {
		t.Errorf("code %v, message %q; want FailedPrecondition matching %s", code, msg, want)
	}
}

// useDNS answers every host name lookup of this process from a DNS server of the test's own
// until the test ends: names with a label "servfail" get SERVFAIL (a DNS server in trouble),
// every other name NXDOMAIN (names in /etc/hosts and IP addresses are not looked up).
func useDNS(t *testing.T) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if reply := dnsReply(buf[:n]); reply != nil {
				_, _ = pc.WriteTo(reply, from)
			}
		}
	}()
	r := net.DefaultResolver
	preferGo, dial := r.PreferGo, r.Dial
	r.PreferGo = true
	r.Dial = func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", pc.LocalAddr().String())
	}
	t.Cleanup(func() {
		r.PreferGo, r.Dial = preferGo, dial
		_ = pc.Close()
	})
}

// dnsReply answers a DNS query (RFC 1035 §4.1) with no records: SERVFAIL for a name with a
// label "servfail", NXDOMAIN for any other.
func dnsReply(q []byte) []byte {
	if len(q) < 12 {
		return nil
	}
	i, servfail := 12, false
	for i < len(q) && q[i] != 0 {
		l := int(q[i])
		if i+1+l > len(q) {
			return nil
		}
		servfail = servfail || strings.EqualFold(string(q[i+1:i+1+l]), "servfail")
		i += 1 + l
	}
	end := i + 1 + 4 // the name's last byte, QTYPE and QCLASS
	if end > len(q) {
		return nil
	}
	rcode := byte(3) // NXDOMAIN
	if servfail {
		rcode = 2 // SERVFAIL
	}
	reply := append([]byte{q[0], q[1], 0x80 | q[2]&0x01, 0x80 | rcode, 0, 1, 0, 0, 0, 0, 0, 0}, q[12:end]...)
	return reply
}

// TestEndpointThatDoesNotResolve: a host name that does not exist is a configuration error
// naming where the endpoint came from (the volume: InvalidArgument; the node's default:
// FailedPrecondition), not "OSS unavailable"; a DNS server failing stays retryable
// (Unavailable).
func TestEndpointThatDoesNotResolve(t *testing.T) {
	useDNS(t)
	srv := emu(t)
	genModel(t, srv, "qwen/", 1<<20)
	noSuchHost := regexp.MustCompile(`list oss://models/qwen/: invalid OSS configuration: the endpoint's host name does not resolve: lookup models\.oss-cn-nowhere\.invalid on \S+: no such host$`)

	t.Run("volume attribute", func(t *testing.T) {
		p := startPlugin(t, inProcess{srv}, "")
		req := publishReq("oss://models/qwen/", target(t, "pod-a"))
		req.VolumeContext["endpoint"] = "oss-cn-nowhere.invalid"
		code, msg := publishErr(t, p, req)
		if code != codes.InvalidArgument || !strings.HasPrefix(msg, `volume attribute endpoint "oss-cn-nowhere.invalid": `) || !noSuchHost.MatchString(msg) {
			t.Errorf("publish: %v %q; want InvalidArgument naming the attribute, matching %s", code, msg, noSuchHost)
		}
		// A StorageClass with it is refused too, rather than given a volume of unknown size.
		_, err := p.controller.CreateVolume(t.Context(), createReq("pvc-nowhere", map[string]string{"ossPath": "oss://models/qwen/", "endpoint": "oss-cn-nowhere.invalid"}, 1))
		if status.Code(err) != codes.InvalidArgument || !noSuchHost.MatchString(status.Convert(err).Message()) {
			t.Errorf("CreateVolume: %v; want InvalidArgument matching %s", err, noSuchHost)
		}
	})
	t.Run("node default", func(t *testing.T) {
		p := startPlugin(t, endpointURL("http://oss-cn-nowhere.invalid"), "")
		code, msg := publishErr(t, p, publishReq("oss://models/qwen/", target(t, "pod-a")))
		if code != codes.FailedPrecondition || !strings.HasPrefix(msg, "the node's default endpoint http://oss-cn-nowhere.invalid (its OSS_ENDPOINT; the chart's oss.endpoint): ") || !noSuchHost.MatchString(msg) {
			t.Errorf("publish: %v %q; want FailedPrecondition naming the node's OSS_ENDPOINT, matching %s", code, msg, noSuchHost)
		}
	})
	t.Run("DNS server failing", func(t *testing.T) {
		p := startPlugin(t, endpointURL("http://oss-cn-test.servfail.example"), "")
		code, msg := publishErr(t, p, publishReq("oss://models/qwen/", target(t, "pod-a")))
		if code != codes.Unavailable || !strings.Contains(msg, "OSS unavailable") || !strings.Contains(msg, "lookup models.oss-cn-test.servfail.example") {
			t.Errorf("publish: %v %q; want Unavailable (a retry may succeed)", code, msg)
		}
	})
}

// TestRefusedNodeCredentialsNamed: a publish whose listing OSS refuses with the node's own
// credentials (no volume secret) says they are the node's and where they are set, with the key
// masked and no secret value.
func TestRefusedNodeCredentialsNamed(t *testing.T) {
	srv := emu(t)
	genModel(t, srv, "qwen/", 1<<20)
	env := map[string]string{"OSS_ENDPOINT": srv.Endpoint(), "OSS_REGION": region,
		"OSS_ACCESS_KEY_ID": ak, "OSS_ACCESS_KEY_SECRET": "not-the-secret"}
	p := startPlugin(t, inProcess{srv}, "", func(o *driver.Options) { o.Getenv = func(k string) string { return env[k] } })
	req := publishReq("oss://models/qwen/", target(t, "pod"))
	req.Secrets = nil
	_, err := p.node.NodePublishVolume(t.Context(), req)
	msg := status.Convert(err).Message()
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(msg, "the node's credentials (its OSS_ACCESS_KEY_ID; the chart's oss.existingSecret or oss.accessKeyId), access key ") ||
		strings.Contains(msg, "not-the-secret") || strings.Contains(msg, ak) {
		t.Errorf("publish with the node's refused credentials: %v", err)
	}
}
