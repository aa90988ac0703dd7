package cache

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// ensureTmpfs makes sure root is a tmpfs: it adopts one already mounted there (a restarted
// plugin finds the tmpfs it mounted before, with every model in it) or mounts a new one.
// A mount of another kind at root is an error: the cache would silently live on disk.
func ensureTmpfs(table *mountTable, root string, cfg TmpfsConfig) error {
	if e, ok := table.at(root); ok {
		if e.FSType != "tmpfs" {
			return fmt.Errorf("cache root %s is a %s mount, not tmpfs; unmount it or disable the cache's tmpfs mount", root, e.FSType)
		}
		klog.InfoS("Adopted the cache tmpfs", "root", root, "options", e.VFSOptions)
		return nil
	}
	opts := []string{"mode=0755"}
	if cfg.Size != "" {
		opts = append(opts, "size="+cfg.Size)
	}
	if cfg.Huge != "" {
		opts = append(opts, "huge="+cfg.Huge)
	}
	data := strings.Join(opts, ",")
	if err := unix.Mount("modelcast", root, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, data); err != nil {
		return fmt.Errorf("mount the cache tmpfs at %s (%s): %w", root, data, err)
	}
	klog.InfoS("Mounted the cache tmpfs", "root", root, "options", data)
	return nil
}
