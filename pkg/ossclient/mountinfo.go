package ossclient

import (
	"path/filepath"
	"strings"

	"github.com/moby/sys/mountinfo"
)

// HugeTmpfs reports whether dir lies on a tmpfs that allocates huge pages (huge=always or
// huge=within_size). Downloads write such files through a memory mapping, which is faster
// there; on 4 KiB pages pwrite(2) is (docs/benchmarks.md). Any doubt answers false.
func HugeTmpfs(dir string) bool {
	abs, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return false
	}
	if abs, err = filepath.Abs(abs); err != nil {
		return false
	}
	// The mount holding dir is the longest mount point it lies under (the last one of that path:
	// the topmost).
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return !within(abs, m.Mountpoint), false
	})
	if err != nil {
		return false
	}
	var best *mountinfo.Info
	for _, m := range mounts {
		if best == nil || len(m.Mountpoint) >= len(best.Mountpoint) {
			best = m
		}
	}
	return best != nil && best.FSType == "tmpfs" && hasHugeOption(best.VFSOptions)
}

func within(path, mountpoint string) bool {
	return path == mountpoint || mountpoint == "/" || strings.HasPrefix(path, mountpoint+"/")
}

func hasHugeOption(opts string) bool {
	for _, o := range strings.Split(opts, ",") {
		if o == "huge=always" || o == "huge=within_size" {
			return true
		}
	}
	return false
}
