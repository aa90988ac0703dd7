package agenttest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// The plugin builds of this process, by build tags.
var (
	buildsMu sync.Mutex
	builds   = map[string]*build{}
)

type build struct {
	once sync.Once
	bin  string
	err  error
}

// BuildPlugin builds csi-plugin with the build tags given (modelcast_testhooks: the agent's
// test hooks) once per process and tags, into a temporary directory, and returns the binary.
func BuildPlugin(tags ...string) (string, error) {
	key := strings.Join(tags, ",")
	buildsMu.Lock()
	b := builds[key]
	if b == nil {
		b = &build{}
		builds[key] = b
	}
	buildsMu.Unlock()
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", "agenttest-bin-")
		if err != nil {
			b.err = err
			return
		}
		b.bin = filepath.Join(dir, "csi-plugin")
		args := []string{"build", "-o", b.bin}
		if key != "" {
			args = append(args, "-tags", key)
		}
		out, err := exec.Command("go", append(args, "github.com/modelcast/modelcast/cmd/csi-plugin")...).CombinedOutput()
		if err != nil {
			b.err = fmt.Errorf("go build csi-plugin (tags %q): %w: %s", key, err, out)
		}
	})
	return b.bin, b.err
}
