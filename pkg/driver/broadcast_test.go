package driver_test

import (
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/modelcast/modelcast/pkg/broadcast"
	"github.com/modelcast/modelcast/pkg/config"
	"github.com/modelcast/modelcast/pkg/driver"
	"github.com/modelcast/modelcast/test/freeport"
	"github.com/modelcast/modelcast/test/redistest"
)

// TestBroadcastPublish: two node plugins with broadcast on publish the same model: one of them
// reads it from OSS, the other from it, and OSS serves one copy. The second pod's Events say
// where its bytes come from (the first node, at which position of the chain) and, when ready,
// how many came from peers and from OSS.
func TestBroadcastPublish(t *testing.T) {
	srv := emu(t)
	files := genModel(t, srv, "qwen/", 16<<20)
	rds := redistest.Start(t, redistest.Options{Username: "modelcast", Password: "pw"})
	host, port, _ := net.SplitHostPort(rds.Addr())
	p, _ := strconv.Atoi(port)
	bind := freeport.Must(t)
	broadcast := func(ip string) pluginOpt {
		return withOptions(func(o *driver.Options) {
			o.NodeID, o.NodeIP = "node-"+ip, ip
			o.Config.BindPort = bind
			o.Config.Broadcast.EnableBroadcast = true
			o.Config.Broadcast.Tenant = "team"
			o.Config.Broadcast.DB.Host, o.Config.Broadcast.DB.Port = host, p
			o.Config.Broadcast.DB.Username, o.Config.Broadcast.DB.Password = "modelcast", "pw"
		})
	}
	kube := fake.NewSimpleClientset(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "vllm-1", Namespace: "serving", UID: "uid-2"}})
	a := startPlugin(t, inProcess{srv}, "", broadcast("127.0.0.31"))
	b := startPlugin(t, inProcess{srv}, "", broadcast("127.0.0.32"), withKube(kube))
	srv.ResetStats()
	srv.SetEgressRate(8 << 20)
	ta, tb := target(t, "pod-a"), target(t, "pod-b")
	var wg sync.WaitGroup
	var errA, errB error
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, errA = a.node.NodePublishVolume(t.Context(), publishReq("oss://models/qwen/", ta))
	}()
	// b joins once a heads the chain.
	deadline := time.Now().Add(10 * time.Second)
	for ms := a.d.Store().StagingModels(); len(ms) == 0 || !strings.HasPrefix(ms[0].Progress.From, "OSS"); ms = a.d.Store().StagingModels() {
		if time.Now().After(deadline) {
			t.Fatal("a never started reading from OSS")
		}
		time.Sleep(10 * time.Millisecond)
	}
	reqB := publishReq("oss://models/qwen/", tb)
	reqB.VolumeContext["csi.storage.k8s.io/pod.name"] = "vllm-1"
	reqB.VolumeContext["csi.storage.k8s.io/pod.namespace"] = "serving"
	_, errB = b.node.NodePublishVolume(t.Context(), reqB)
	wg.Wait()
	if errA != nil || errB != nil {
		t.Fatalf("publish: %v, %v", errA, errB)
	}
	checkMounted(t, ta, files)
	checkMounted(t, tb, files)
	var size int64
	for _, f := range files {
		size += int64(len(f))
	}
	if served := srv.Stats().BytesServed; served != size {
		t.Errorf("OSS served %d bytes for two nodes of a %d-byte model, want one copy", served, size)
	}
	ma, mb := a.d.Store().Models(), b.d.Store().Models()
	if len(ma) != 1 || len(mb) != 1 {
		t.Fatalf("models %+v and %+v, want one each", ma, mb)
	}
	head, tail := ma[0], mb[0]
	if head.FromOSS != size || head.FromPeers != 0 || tail.FromOSS != 0 || tail.FromPeers != size ||
		head.From != "OSS (position 1 of 1)" || tail.From != "node node-127.0.0.31 (position 2 of 2)" {
		t.Errorf("sources %+v and %+v: want a all from OSS, b all from a", head, tail)
	}
	waitEvents(t, kube, "serving", "vllm-1", "node-127.0.0.32", map[string]*regexp.Regexp{
		driver.ReasonStaging: regexp.MustCompile(`^Staging model oss://models/qwen/ \(16\.\d MB, \d+ files\) from node node-127\.0\.0\.31 \(position 2 of 2\)$`),
		driver.ReasonReady:   regexp.MustCompile(`^Ready: 16\.\d MB in \d+\.\d s \(peer 16\.\d MB, OSS 0 B\)$`),
	})
}

// TestCongestionControlNamesAgree: pkg/config and pkg/broadcast each name the default and the
// "kernel's default" congestion control (neither imports the other); the driver hands the
// configured name through as it is, so the two must not drift apart.
func TestCongestionControlNamesAgree(t *testing.T) {
	if config.DefaultCongestionControl != broadcast.DefaultCongestionControl ||
		config.SystemCongestionControl != broadcast.SystemCongestionControl {
		t.Errorf("config names %q and %q, broadcast %q and %q", config.DefaultCongestionControl, config.SystemCongestionControl,
			broadcast.DefaultCongestionControl, broadcast.SystemCongestionControl)
	}
}
