package broadcast

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"
)

// systemCongestionControl is the kernel's default for new connections.
func systemCongestionControl(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_congestion_control")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// acceptedCongestionControl listens with cc, connects, and returns the accepted connection's
// congestion control (the sending side of a hop) and Listen's warning.
func acceptedCongestionControl(t *testing.T, cc string) (string, error) {
	t.Helper()
	ln, warn, err := Listen(context.Background(), "127.0.0.1:0", cc)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	got, err := congestionControl(a.(*net.TCPConn))
	if err != nil {
		t.Fatal(err)
	}
	return got, warn
}

// TestListenSetsCongestionControl: every connection the data plane accepts sends with the
// configured congestion control, not the kernel's default. reno is built into every kernel;
// the test asks for it unless it is the default, then for cubic.
func TestListenSetsCongestionControl(t *testing.T) {
	want := "reno"
	if systemCongestionControl(t) == want {
		want = "cubic"
	}
	got, warn := acceptedCongestionControl(t, want)
	if warn != nil || got != want {
		t.Fatalf("accepted connection: %q (warning %v), want %q", got, warn, want)
	}
}

// TestListenKeepsDefault: "system" leaves the kernel's default, and a name the kernel does not
// offer still gives a working listener with the default, and a warning that names the choices.
func TestListenKeepsDefault(t *testing.T) {
	def := systemCongestionControl(t)
	if got, warn := acceptedCongestionControl(t, SystemCongestionControl); warn != nil || got != def {
		t.Errorf("system: %q (warning %v), want %q", got, warn, def)
	}
	got, warn := acceptedCongestionControl(t, "nosuchcc")
	if got != def {
		t.Errorf("nosuchcc: accepted connection has %q, want the default %q", got, def)
	}
	if warn == nil || !strings.Contains(warn.Error(), `"nosuchcc"`) || !strings.Contains(warn.Error(), "this kernel offers") || !strings.Contains(warn.Error(), def) {
		t.Errorf("nosuchcc: warning %v, want one naming it and what the kernel offers", warn)
	}
}
