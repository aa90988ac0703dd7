package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/modelcast/modelcast/pkg/ossclient"
)

// Meta describes a committed model; it is kept in meta/<key>.json beside the model, never
// inside it (pods see the model directory).
type Meta struct {
	Key          string    `json:"key"`
	URI          string    `json:"uri"`
	Endpoint     string    `json:"endpoint"`
	Fingerprint  string    `json:"fingerprint"`
	Size         int64     `json:"size"`
	Objects      int       `json:"objects"`
	From         string    `json:"from"` // where the bytes came from
	FromOSS      int64     `json:"fromOSS,omitempty"`
	FromPeers    int64     `json:"fromPeers,omitempty"`
	StagedAt     time.Time `json:"stagedAt"`
	StageSeconds float64   `json:"stageSeconds"`
	// LastUsed is when the model was last acquired or released: the order of eviction.
	LastUsed time.Time `json:"lastUsed"`
}

// manifestFile is what meta/<key>.manifest.json holds beside a committed model: the manifest
// it was staged from (so a cache hit, and a check of the files, need no listing after a
// restart) and who listed it (Model.Lister tokens, most recent last).
type manifestFile struct {
	Manifest *ossclient.Manifest `json:"manifest"`
	Listers  []string            `json:"listers,omitempty"`
}

// manifestWire decodes a manifestFile: the manifest goes through ossclient.DecodeManifest,
// which checks it as strictly as one listed from OSS.
type manifestWire struct {
	Manifest json.RawMessage `json:"manifest"`
	Listers  []string        `json:"listers,omitempty"`
}

// manifestSuffix names a model's manifest file in meta/ (<key>.manifest.json).
const manifestSuffix = ".manifest.json"

// writeJSON writes v to path through a rename, so a crash leaves the old or the new file.
func writeJSON(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, werr := tmp.Write(data)
	if err := errors.Join(werr, tmp.Sync(), tmp.Close()); err != nil {
		_ = os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		_ = os.Remove(tmp.Name())
		return err
	}
	return nil
}

// readJSON reads path into v; a missing file leaves v untouched and is not an error.
func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
