package cache

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/moby/sys/mountinfo"
)

// mountTable is the part of /proc/self/mountinfo the store cares about. Every reader of the
// mount table in modelcast goes through github.com/moby/sys/mountinfo.
type mountTable struct {
	entries []*mountinfo.Info
}

func readMountTable(file string) (*mountTable, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	defer f.Close()
	entries, err := mountinfo.GetMountsFromReader(f, nil)
	if err != nil {
		return nil, fmt.Errorf("read mount table %s: %w", file, err)
	}
	return &mountTable{entries: entries}, nil
}

// at returns the topmost mount at exactly dir, if any.
func (t *mountTable) at(dir string) (*mountinfo.Info, bool) {
	var found *mountinfo.Info
	for _, e := range t.entries {
		if e.Mountpoint == dir {
			found = e
		}
	}
	return found, found != nil
}

// locate returns the file system (major, minor) holding dir and dir's path inside that file
// system, which is what the Root field of a bind mount of dir shows.
func (t *mountTable) locate(dir string) (major, minor int, fsPath string, err error) {
	var best *mountinfo.Info
	for _, e := range t.entries {
		if within(dir, e.Mountpoint) && (best == nil || len(e.Mountpoint) >= len(best.Mountpoint)) {
			best = e
		}
	}
	if best == nil {
		return 0, 0, "", fmt.Errorf("no mount holds %s", dir)
	}
	rel := strings.TrimPrefix(dir, best.Mountpoint)
	return best.Major, best.Minor, path.Join(best.Root, rel), nil
}

// bindsOf maps each mount point whose source is a directory directly under dir (on the same
// file system) to that directory's name: for dir = <root>/models, target path → model key.
func (t *mountTable) bindsOf(dir string) (map[string]string, error) {
	major, minor, fsPath, err := t.locate(dir)
	if err != nil {
		return nil, err
	}
	binds := map[string]string{}
	for _, e := range t.entries {
		if e.Major != major || e.Minor != minor {
			continue
		}
		rel, ok := strings.CutPrefix(e.Root, fsPath+"/")
		if !ok || rel == "" || strings.Contains(rel, "/") {
			continue
		}
		binds[e.Mountpoint] = rel
	}
	return binds, nil
}

func within(p, dir string) bool {
	return p == dir || dir == "/" || strings.HasPrefix(p, dir+"/")
}

// absolute resolves dir to the absolute, symlink-free path the kernel shows in mountinfo.
func absolute(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}
