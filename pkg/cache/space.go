package cache

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Room is what the node can give a new model: free bytes of the cache's file system and
// memory the kernel could hand out (tmpfs pages are memory).
type Room struct {
	FSTotal, FSFree int64
	MemAvailable    int64
}

// measureRoom reads statfs(root) and MemAvailable from meminfo.
func measureRoom(root, meminfo string) (Room, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return Room{}, fmt.Errorf("statfs %s: %w", root, err)
	}
	mem, err := memAvailable(meminfo)
	if err != nil {
		return Room{}, err
	}
	return Room{FSTotal: int64(st.Blocks) * st.Bsize, FSFree: int64(st.Bavail) * st.Bsize, MemAvailable: mem}, nil
}

func memAvailable(meminfo string) (int64, error) {
	f, err := os.Open(meminfo)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemAvailable:")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			break
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: MemAvailable %q: %w", meminfo, rest, err)
		}
		return kb << 10, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s has no MemAvailable line", meminfo)
}
