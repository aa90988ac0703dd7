package sockopt

import (
	"errors"
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

func TestSetRcvLowat(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{64 << 10, 1} {
		var got int
		var serr, gerr error
		if err := raw.Control(func(fd uintptr) {
			serr = SetRcvLowat(fd, n)
			got, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT)
		}); err != nil || serr != nil || gerr != nil {
			t.Fatal(err, serr, gerr)
		}
		if got != n {
			t.Errorf("SO_RCVLOWAT %d after setting %d", got, n)
		}
	}
	// Not a socket: the kernel's error, not a silent success.
	if err := SetRcvLowat(^uintptr(0)>>1, 1); !errors.Is(err, unix.EBADF) {
		t.Errorf("on a closed descriptor: %v, want EBADF", err)
	}
}
