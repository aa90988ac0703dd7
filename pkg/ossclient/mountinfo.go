package ossclient

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
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
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	best, huge := "", false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || len(fields) < sep+4 {
			continue
		}
		mp := unescapeMountPath(fields[4])
		if !within(abs, mp) || len(mp) < len(best) {
			continue
		}
		best = mp
		huge = fields[sep+1] == "tmpfs" && hasHugeOption(fields[sep+3])
	}
	return huge
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

// unescapeMountPath undoes the octal escapes (\040 for a space, …) of /proc/self/mountinfo.
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }
