package ossemu

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
)

func TestProcess(t *testing.T) {
	p, err := StartProcess(t.Context(), "--bucket", "models", "--public-read", "--generate", "models/m/=2MiB",
		"--profile", "object-store", "--first-byte-latency", "5ms")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	get := func() {
		res, err := http.Get(p.Endpoint + "/models/m/config.json")
		if err != nil {
			t.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || n == 0 {
			t.Fatalf("GET config.json: %s, %d bytes", res.Status, n)
		}
	}
	profile := func() string {
		res, err := http.Get(p.Endpoint + "/-/profile")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var pr Profile
		if err := json.NewDecoder(res.Body).Decode(&pr); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("%v %d", pr.FirstByteLatency, pr.ConnBytesPerSec)
	}
	if got := profile(); got != "5ms 50000000" {
		t.Errorf("profile from --profile object-store --first-byte-latency 5ms = %s", got)
	}
	if err := p.SetProfile(Profile{}); err != nil {
		t.Fatal(err)
	}
	if got := profile(); got != "0s 0" {
		t.Errorf("profile after SetProfile(Profile{}) = %s", got)
	}
	get()
	st, err := p.Stats()
	if err != nil || st.Requests[OpGet] != 1 || st.BytesServed == 0 {
		t.Fatalf("stats %+v, %v", st, err)
	}
	if err := p.ResetStats(); err != nil {
		t.Fatal(err)
	}
	if err := p.InjectFault(Fault{Op: OpGet, Kind: FaultStatus, Status: 503, Count: 1}); err != nil {
		t.Fatal(err)
	}
	if err := p.SetEgressRate(0); err != nil {
		t.Fatal(err)
	}
	res, err := http.Get(p.Endpoint + "/models/m/config.json")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 503 {
		t.Errorf("injected fault: %s, want 503", res.Status)
	}
	get()
	if st, _ := p.Stats(); st.Requests[OpGet] != 2 || st.FaultsHit != 1 {
		t.Errorf("after reset: %+v", st)
	}
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := StartProcess(context.Background(), "--no-such-flag"); err == nil {
		t.Errorf("a process that cannot start is not reported")
	}
}
