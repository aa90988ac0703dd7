package broadcast

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// A hop's bytes go from the data plane's accepted connections, so their TCP congestion
// control is the one that decides how fast a hop runs. The listener sets it (TCP_CONGESTION),
// and the kernel gives every accepted connection the listener's choice.
//
// Why not the kernel's default: a hop's acknowledgements come back over the link that carries
// its sender's inbound traffic (OSS into the head, the predecessor's stream into a relay).
// While that link is busy, they wait in its queue, and the hop's round trip grows from tens of
// microseconds to milliseconds. BBR (as Linux has it) keeps a flow's bytes in flight under
// twice its bandwidth times its smallest round trip, so it holds the hop to a fraction of
// the link: in chain N = 2 over 1 Gbit/s shaped links the head's successor received at 80 MB/s
// with 16-packet windows and a 10 ms round trip, and was ready 1.2 s after the head. A
// loss-based control (CUBIC) grows its window with the round trip: 0.08 s after the head.

// DefaultCongestionControl is the TCP congestion control of a hop's sending side unless
// configured; SystemCongestionControl leaves the kernel's default. (pkg/config checks a
// configured name and holds the same two; pkg/driver's TestCongestionControlNamesAgree keeps
// them equal.)
const (
	DefaultCongestionControl = "cubic"
	SystemCongestionControl  = "system"
)

// Listen listens on addr as the peer data plane does: every accepted connection gets the
// congestion control cc (SystemCongestionControl or "": the kernel's default). The listener
// works whatever becomes of cc: if the kernel refuses it (not built or loaded, or not allowed),
// it keeps the default and warn says why, with the names this kernel offers.
func Listen(ctx context.Context, addr, cc string) (ln net.Listener, warn error, err error) {
	var lc net.ListenConfig
	if cc != "" && cc != SystemCongestionControl {
		lc.Control = func(_, _ string, raw syscall.RawConn) error {
			if cerr := raw.Control(func(fd uintptr) {
				warn = unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, cc)
			}); cerr != nil {
				warn = cerr
			}
			return nil
		}
	}
	ln, err = lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	if warn != nil {
		warn = fmt.Errorf("TCP congestion control %q for the peer data plane (this kernel offers %s): %w", cc, availableCongestionControls(), warn)
	}
	return ln, warn, nil
}

// congestionControl is the congestion control of a TCP connection.
func congestionControl(c *net.TCPConn) (string, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return "", err
	}
	var name string
	var gerr error
	if err := raw.Control(func(fd uintptr) {
		name, gerr = unix.GetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION)
	}); err != nil {
		return "", err
	}
	return strings.TrimRight(name, "\x00"), gerr
}

// availableCongestionControls lists what the kernel offers, for messages.
func availableCongestionControls() string {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_available_congestion_control")
	if err != nil {
		return "unknown: " + err.Error()
	}
	return strings.Join(strings.Fields(string(b)), ", ")
}
