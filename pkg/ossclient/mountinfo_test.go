package ossclient

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func TestHugeTmpfs(t *testing.T) {
	if HugeTmpfs("/nonexistent/dir") {
		t.Errorf("a missing directory is reported as huge-page tmpfs")
	}
	if os.Geteuid() != 0 {
		t.Skip("mounting tmpfs needs root")
	}
	for opts, want := range map[string]bool{"size=16m": false, "size=16m,huge=within_size": true, "size=16m,huge=always": true, "size=16m,huge=never": false} {
		dir := t.TempDir()
		if err := unix.Mount("tmpfs", dir, "tmpfs", 0, opts); err != nil {
			t.Fatal(err)
		}
		sub := dir + "/a b"
		if err := os.Mkdir(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		if got := HugeTmpfs(sub); got != want {
			t.Errorf("tmpfs %s: HugeTmpfs = %v, want %v", opts, got, want)
		}
		if err := unix.Unmount(dir, 0); err != nil {
			t.Fatal(err)
		}
	}
}
