package driver

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	"k8s.io/mount-utils"
)

// Mounter makes and inspects pods' mounts. The production one is kernelMounter; tests use it
// too (as root), since the point is the kernel's behaviour.
type Mounter interface {
	// BindReadOnly mounts dir at target (which exists), read-only, nosuid, nodev.
	BindReadOnly(dir, target string) error
	Unmount(target string) error
	// IsMountPoint detects bind mounts too (a same-device check would not).
	IsMountPoint(path string) (bool, error)
}

// kernelMounter mounts with the mount(2) system call: no mount(8) process per publish (a cache
// hit costs milliseconds), no systemd scope, and no shared state between concurrent calls.
type kernelMounter struct{}

func (kernelMounter) BindReadOnly(dir, target string) error {
	if err := unix.Mount(dir, target, "", unix.MS_BIND, ""); err != nil {
		return err
	}
	// A bind mount takes its flags from a remount.
	if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		_ = unix.Unmount(target, unix.MNT_DETACH)
		return fmt.Errorf("remount read-only: %w", err)
	}
	return nil
}

// Unmount never follows a symbolic link at target: it unmounts what is at that path or nothing.
func (kernelMounter) Unmount(target string) error { return unix.Unmount(target, unix.UMOUNT_NOFOLLOW) }

func (kernelMounter) IsMountPoint(path string) (bool, error) { return mountinfo.Mounted(path) }

// bindReadOnly creates target and mounts dir there read-only.
func bindReadOnly(m Mounter, dir, target string) error {
	if err := os.MkdirAll(target, 0o750); err != nil {
		return fmt.Errorf("create target %s: %w", target, err)
	}
	if err := m.BindReadOnly(dir, target); err != nil {
		return fmt.Errorf("bind %s at %s: %w", dir, target, err)
	}
	return nil
}

// mountState says what is at target: nothing, a healthy mount, or a mount whose source is
// gone (a corrupted mount: ENOTCONN, ESTALE, …).
func mountState(m Mounter, target string) (exists, mounted, corrupted bool, err error) {
	mounted, err = m.IsMountPoint(target)
	switch {
	case err == nil:
		return true, mounted, false, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, false, false, nil
	case mount.IsCorruptedMnt(err):
		return true, true, true, nil
	}
	return false, false, false, err
}

// unmountTarget unmounts everything at target and removes the directory. It retries with
// backoff, and as a last resort detaches the mount lazily: a pod is gone when kubelet asks,
// and a stuck unmount must not leave the volume published forever. Idempotent.
func unmountTarget(m Mounter, target string) error {
	delay := 50 * time.Millisecond
	var lastErr error
	for attempt := 0; attempt < 6; attempt++ {
		exists, mounted, _, err := mountState(m, target)
		if err != nil {
			lastErr = err
		} else if !exists {
			return nil
		} else if !mounted {
			if err := os.Remove(target); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("remove target %s: %w", target, err)
			}
			return nil
		} else if err := m.Unmount(target); err != nil {
			lastErr = err
		} else {
			continue // check again: mounts may be stacked
		}
		time.Sleep(delay)
		delay *= 2
	}
	klog.ErrorS(lastErr, "Unmount keeps failing; detaching lazily", "targetPath", target)
	if err := unix.Unmount(target, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w (detach: %w)", target, lastErr, err)
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove target %s: %w", target, err)
	}
	return nil
}
