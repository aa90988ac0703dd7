package agenttest

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"github.com/modelcast/modelcast/pkg/config"
)

// WriteConfig writes cfg as dir/config.json, as the agent reads it (pkg/config: a field left
// zero takes its default), and returns its path.
func WriteConfig(dir string, cfg config.Config) (string, error) {
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "config.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return "", err
	}
	return path, nil
}

// Ptr returns a pointer to v: config.Cache.Tmpfs is one (nil: on).
func Ptr[T any](v T) *T { return &v }

// RedisDB is broadcast.db for the Redis at addr (host:port), without credentials.
func RedisDB(addr string) (config.DB, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return config.DB{}, fmt.Errorf("redis address %q: %w", addr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return config.DB{}, fmt.Errorf("redis address %q: %w", addr, err)
	}
	return config.DB{Host: host, Port: p}, nil
}

// OSSEnv is the environment that points an agent at an OSS endpoint (the emulator's), with
// its region and credentials (csi-plugin fetch's OSS_* variables).
func OSSEnv(endpoint, region, accessKeyID, accessKeySecret string) []string {
	return []string{"OSS_ENDPOINT=" + endpoint, "OSS_REGION=" + region,
		"OSS_ACCESS_KEY_ID=" + accessKeyID, "OSS_ACCESS_KEY_SECRET=" + accessKeySecret}
}
