package driver_test

import (
	"net"
	"strconv"
	"sync"
	"testing"

	"github.com/modelcast/modelcast/pkg/driver"
	"github.com/modelcast/modelcast/test/redistest"
)

// TestBroadcastPublish: two node plugins with broadcast on publish the same model: one of them
// reads it from OSS, the other from it, and OSS serves one copy.
func TestBroadcastPublish(t *testing.T) {
	srv := emu(t)
	files := genModel(t, srv, "qwen/", 16<<20)
	rds := redistest.Start(t, redistest.Options{Username: "modelcast", Password: "pw"})
	host, port, _ := net.SplitHostPort(rds.Addr())
	p, _ := strconv.Atoi(port)
	bind := freePort(t)
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
	a := startPlugin(t, inProcess{srv}, "", broadcast("127.0.0.31"))
	b := startPlugin(t, inProcess{srv}, "", broadcast("127.0.0.32"))
	srv.ResetStats()
	srv.SetEgressRate(16 << 20)
	ta, tb := target(t, "pod-a"), target(t, "pod-b")
	var wg sync.WaitGroup
	var errA, errB error
	wg.Add(2)
	go func() {
		defer wg.Done()
		_, errA = a.node.NodePublishVolume(t.Context(), publishReq("oss://models/qwen/", ta))
	}()
	go func() {
		defer wg.Done()
		_, errB = b.node.NodePublishVolume(t.Context(), publishReq("oss://models/qwen/", tb))
	}()
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
	if len(ma) != 1 || len(mb) != 1 || (ma[0].From == "OSS") == (mb[0].From == "OSS") {
		t.Errorf("sources %q and %q: want one node from OSS and one from its peer", ma[0].From, mb[0].From)
	}
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
