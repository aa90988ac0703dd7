package driver_test

import (
	"bytes"
	"flag"
	"strings"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/klog/v2"
)

// lockedBuffer is klog's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestNoSecretInLogsOrEvents: with logging at -v=6 (every request, sanitized), publishes that
// succeed and fail with the OSS secret in the request leave it in no log line and no Event.
func TestNoSecretInLogsOrEvents(t *testing.T) {
	var logs lockedBuffer
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	_ = fs.Set("v", "6")
	klog.SetOutput(&logs)
	klog.LogToStderr(false)
	t.Cleanup(func() {
		_ = fs.Set("v", "0")
		klog.LogToStderr(true)
	})

	srv := emu(t)
	genModel(t, srv, "qwen/", 2<<20)
	kube := fake.NewSimpleClientset(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "vllm-0", Namespace: "serving"}})
	p := startPlugin(t, inProcess{srv}, "", withKube(kube))
	ok := publishReq("oss://models/qwen/", target(t, "pod-a"))
	ok.VolumeContext["csi.storage.k8s.io/pod.name"] = "vllm-0"
	ok.VolumeContext["csi.storage.k8s.io/pod.namespace"] = "serving"
	if _, err := p.node.NodePublishVolume(t.Context(), ok); err != nil {
		t.Fatal(err)
	}
	// Refused by OSS (another secret) and a missing model: both logged as failed calls.
	wrong := publishReq("oss://models/qwen/", target(t, "pod-b"))
	wrong.Secrets = map[string]string{"akId": ak, "akSecret": "another-secret-value"}
	missing := publishReq("oss://models/nothing-here/", target(t, "pod-c"))
	for _, req := range []*csi.NodePublishVolumeRequest{wrong, missing} {
		if _, err := p.node.NodePublishVolume(t.Context(), req); err == nil {
			t.Fatal("a bad publish succeeded")
		}
	}
	p.stop()
	klog.Flush()
	out := logs.String()
	if !strings.Contains(out, "NodePublishVolume") || !strings.Contains(out, `secrets\":\"***stripped***`) {
		t.Fatalf("the log does not show the sanitized requests at -v=6:\n%s", tailString(out, 3000))
	}
	evs, err := kube.CoreV1().Events("serving").List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs.Items {
		out += "\n" + e.Message
	}
	for _, secret := range []string{sk, "another-secret-value"} {
		if strings.Contains(out, secret) {
			t.Errorf("a secret appears in the logs or Events:\n%s", tailString(out, 3000))
		}
	}
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
