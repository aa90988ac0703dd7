package ossclient_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/modelcast/modelcast/pkg/ossclient"
	"github.com/modelcast/modelcast/test/ossemu"
)

// Over one kept-alive plain-HTTP connection, a download alternates large bodies (reads that
// wait for their bytes: lowat.go) with tiny ones and the responses' heads (reads that wake
// for one byte). Every request is answered without a failed attempt on that one connection:
// a head or a tiny body read waiting on a mark above its bytes would stall until the read
// timeout and reconnect.
func TestDownloadKeptAliveLargeAndTinyBodies(t *testing.T) {
	for _, mode := range writeModes {
		t.Run(mode, func(t *testing.T) {
			srv := newEmu(t)
			files := map[string][]byte{"config.json": []byte(`{"architectures":["Test"]}`)}
			for i, size := range []int{3<<20 + 12345, 1, 1<<20 + 7, 10, 5000, 4 << 10} {
				files[fmt.Sprintf("part-%d.bin", i)] = randBytes(t, size)
			}
			putModel(srv, "m/", files)
			var mu sync.Mutex
			var failures []string
			c := newClient(t, srv, func(c *ossclient.Config) {
				c.ReadTimeout = 2 * time.Second
				c.OnRequestError = func(op, code string) {
					mu.Lock()
					failures = append(failures, op+" "+code)
					mu.Unlock()
				}
			})
			m, err := c.Manifest(t.Context(), mustURI(t, "oss://models/m/"))
			if err != nil {
				t.Fatal(err)
			}
			srv.ResetStats()
			dir := targetDir(t, mode)
			if err := c.Download(t.Context(), m, dir, ossclient.DownloadOptions{PartSize: 1 << 20, Concurrency: 1}); err != nil {
				t.Fatal(err)
			}
			checkFiles(t, dir, files)
			mu.Lock()
			defer mu.Unlock()
			// The listing's kept-alive connection carries every GET: no new one.
			if st := srv.Stats(); len(failures) > 0 || st.Connections != 0 || st.Requests[ossemu.OpGet] != 11 {
				t.Errorf("%d GETs over %d new connections, failed attempts %v; want 11 over the listing's connection and none", st.Requests[ossemu.OpGet], st.Connections, failures)
			}
		})
	}
}
