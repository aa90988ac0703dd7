// Package config loads modelcast's node configuration: /etc/modelcast/config.json with the keys
// of OSS Connector's config file (expireTimeSec, prefetch.*, broadcast.*, bindPort, logLevel)
// plus modelcast's own cache and model sections, and the environment variables OSS Connector honours.
// Precedence, as OSS Connector's: environment over file over defaults.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"
)

// DefaultPath is where the node plugin reads its configuration.
const DefaultPath = "/etc/modelcast/config.json"

// Environment variables that override the file.
const (
	// EnvMaxCacheAdviseGB overrides prefetch.maxCacheAdviseGB, as in OSS Connector.
	EnvMaxCacheAdviseGB = "CONNECTOR_MAX_CACHE_ADVISE_GB"
	// EnvRedisUsername and EnvRedisPassword override broadcast.db.username and .password, so
	// the password can come from a Kubernetes Secret instead of the file.
	EnvRedisUsername = "MODELCAST_REDIS_USERNAME"
	EnvRedisPassword = "MODELCAST_REDIS_PASSWORD"
)

// Config is the node plugin's configuration.
type Config struct {
	LogLevel int `json:"logLevel"`
	// ExpireTimeSec: seconds a model nobody uses stays cached (default 120).
	ExpireTimeSec int       `json:"expireTimeSec"`
	Prefetch      Prefetch  `json:"prefetch"`
	Broadcast     Broadcast `json:"broadcast"`
	// BindPort: the peer data plane's port (default 19898).
	BindPort int   `json:"bindPort"`
	Cache    Cache `json:"cache"`
	Model    Model `json:"model"`

	// Keys of OSS Connector's file that modelcast reads but has no use for (it logs through
	// klog to stderr); accepted so an existing config.json can be reused as it is.
	LogPath   string `json:"logPath,omitempty"`
	AuditPath string `json:"auditPath,omitempty"`
}

// Prefetch tunes downloads from OSS.
type Prefetch struct {
	// VCPUs × Workers is the number of parallel ranged GETs (defaults 16 and 16).
	VCPUs   int `json:"vcpus"`
	Workers int `json:"workers"`
	// MaxCacheAdviseGB is the soft cap of the node's cache in GB (10^9 bytes); 0: none.
	MaxCacheAdviseGB float64 `json:"maxCacheAdviseGB"`
}

// Broadcast configures the Redis-coordinated chain (OSS Connector's model broadcasting keys; docs/design.md).
type Broadcast struct {
	EnableBroadcast bool   `json:"enableBroadcast"`
	Tenant          string `json:"tenant"`
	// Chains: independent chains per model (default 1).
	Chains int `json:"chains"`
	// HeadConcurrency: parallel ranged GETs of a chain's head (default 0: prefetch.vcpus ×
	// prefetch.workers, as a direct fetch). With the part size, it bounds what a successor
	// fetches again from OSS if the head dies.
	HeadConcurrency int `json:"headConcurrency"`
	// CongestionControl: the TCP congestion control of the connections a node sends a hop's
	// bytes on (DefaultCongestionControl; SystemCongestionControl: the kernel's default).
	CongestionControl string `json:"congestionControl"`
	DB                DB     `json:"db"`
}

// DB is the Redis or Tair service.
type DB struct {
	Host     string `json:"host"`
	Port     int    `json:"port"`
	Username string `json:"username"`
	Password string `json:"password"`
	// URL is an alternative to the fields above: redis://user:pass@host:port/db or rediss:// for TLS.
	URL string `json:"url"`
	TLS bool   `json:"tls"`
	// CAFile is the PEM file of the CA that signed the server's certificate (Alibaba Cloud's
	// Redis/Tair SSL CA, or a private one); empty: the system's roots. CertFile and KeyFile are
	// a client certificate, for servers that require one. Any of them turns TLS on.
	CAFile   string `json:"caFile"`
	CertFile string `json:"certFile"`
	KeyFile  string `json:"keyFile"`
}

// Cache configures the node's tmpfs cache.
type Cache struct {
	Root string `json:"root"`
	// Tmpfs: mount (or adopt) a tmpfs at Root (default true).
	Tmpfs *bool `json:"tmpfs"`
	// TmpfsSize: the tmpfs size, bytes with k/m/g or a percentage of RAM (default "90%").
	TmpfsSize string `json:"tmpfsSize"`
	// Huge: the tmpfs huge option (default "within_size"; "never" to disable).
	Huge string `json:"huge"`
	// MemoryReserveGB: memory a new model must leave available, in GB (10^9 bytes; default 1).
	MemoryReserveGB float64 `json:"memoryReserveGB"`
}

// Model bounds what one model may be: a path that is not a model's directory (a mistyped
// prefix, or oss://bucket/ for the whole bucket) is refused past them, while it is listed and
// before anything is fetched, with FailedPrecondition naming the bound.
type Model struct {
	// MaxObjects: the most objects one model may have (default 100000). It also bounds the
	// pages of its listing: 2 per 1000 objects, plus 1 (201 by default), against a server
	// that keeps answering IsTruncated.
	MaxObjects int `json:"maxObjects"`
	// MaxSizeGB: the most bytes one model may have, in GB (10^9 bytes; default 4000). The
	// cache tmpfs and the node's memory bound a staging as well (cache.tmpfsSize).
	MaxSizeGB float64 `json:"maxSizeGB"`
}

// The TCP congestion control of a hop's sending side (broadcast.congestionControl): CUBIC
// unless configured, or the kernel's default with "system". pkg/broadcast says why not BBR.
const (
	DefaultCongestionControl = "cubic"
	SystemCongestionControl  = "system"
)

// ValidCongestionControl checks a configured name: "system" or a kernel name (lower-case
// letters, digits and underscores, at most 15 characters, as TCP_CA_NAME_MAX allows). Whether
// this kernel offers it is known only when the data plane listens, which logs an error and
// keeps the kernel's default if not.
func ValidCongestionControl(name string) error {
	if name == SystemCongestionControl {
		return nil
	}
	if name == "" || len(name) > 15 || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789_") != "" {
		return fmt.Errorf("%q is not a TCP congestion control name (such as cubic, bbr or reno; or %q for the kernel's default)", name, SystemCongestionControl)
	}
	return nil
}

// Default returns the configuration with every default filled in.
func Default() Config {
	c := Config{}
	c.fill()
	return c
}

func (c *Config) fill() {
	if c.ExpireTimeSec == 0 {
		c.ExpireTimeSec = 120
	}
	if c.Prefetch.VCPUs == 0 {
		c.Prefetch.VCPUs = 16
	}
	if c.Prefetch.Workers == 0 {
		c.Prefetch.Workers = 16
	}
	if c.Broadcast.Chains == 0 {
		c.Broadcast.Chains = 1
	}
	if c.Broadcast.CongestionControl == "" {
		c.Broadcast.CongestionControl = DefaultCongestionControl
	}
	if c.Broadcast.DB.Port == 0 {
		c.Broadcast.DB.Port = 6379
	}
	if c.BindPort == 0 {
		c.BindPort = 19898
	}
	if c.Cache.Root == "" {
		c.Cache.Root = "/var/lib/modelcast/cache"
	}
	if c.Cache.Tmpfs == nil {
		on := true
		c.Cache.Tmpfs = &on
	}
	if c.Cache.TmpfsSize == "" {
		c.Cache.TmpfsSize = "90%"
	}
	if c.Cache.Huge == "" {
		c.Cache.Huge = "within_size"
	}
	if c.Cache.MemoryReserveGB == 0 {
		c.Cache.MemoryReserveGB = 1
	}
	if c.Model.MaxObjects == 0 {
		c.Model.MaxObjects = 100_000
	}
	if c.Model.MaxSizeGB == 0 {
		c.Model.MaxSizeGB = 4000
	}
}

// Load reads the file at path (a missing file means the defaults; a missing file given
// explicitly is still not an error, as the DaemonSet always mounts the same path), applies
// the environment through getenv, fills defaults and validates. Unknown keys are an error
// naming them: a misspelt key would otherwise be silently ignored.
func Load(path string, getenv func(string) string) (Config, error) {
	var c Config
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return c, fmt.Errorf("config %s: %w", path, err)
	default:
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&c); err != nil {
			return c, fmt.Errorf("config %s: %w", path, err)
		}
	}
	if v := strings.TrimSpace(getenv(EnvMaxCacheAdviseGB)); v != "" {
		gb, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return c, fmt.Errorf("%s=%q: not a number of GB", EnvMaxCacheAdviseGB, v)
		}
		c.Prefetch.MaxCacheAdviseGB = gb
	}
	if v := getenv(EnvRedisUsername); v != "" {
		c.Broadcast.DB.Username = v
	}
	if v := getenv(EnvRedisPassword); v != "" {
		c.Broadcast.DB.Password = v
	}
	c.fill()
	return c, c.validate()
}

func (c Config) validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(c.ExpireTimeSec > 0, "expireTimeSec must be positive, got %d", c.ExpireTimeSec)
	check(c.Prefetch.VCPUs > 0 && c.Prefetch.Workers > 0, "prefetch.vcpus and prefetch.workers must be positive, got %d and %d", c.Prefetch.VCPUs, c.Prefetch.Workers)
	check(c.Prefetch.MaxCacheAdviseGB >= 0, "prefetch.maxCacheAdviseGB must not be negative, got %g", c.Prefetch.MaxCacheAdviseGB)
	check(c.Broadcast.Chains > 0, "broadcast.chains must be positive, got %d", c.Broadcast.Chains)
	check(c.Broadcast.HeadConcurrency >= 0, "broadcast.headConcurrency must be 0 (as prefetch) or positive, got %d", c.Broadcast.HeadConcurrency)
	if err := ValidCongestionControl(c.Broadcast.CongestionControl); err != nil {
		errs = append(errs, fmt.Errorf("broadcast.congestionControl: %w", err))
	}
	check(c.BindPort > 0 && c.BindPort < 65536, "bindPort must be a TCP port, got %d", c.BindPort)
	check(c.Broadcast.DB.Port > 0 && c.Broadcast.DB.Port < 65536, "broadcast.db.port must be a TCP port, got %d", c.Broadcast.DB.Port)
	check(c.Cache.MemoryReserveGB >= 0, "cache.memoryReserveGB must not be negative")
	check(c.Model.MaxObjects > 0, "model.maxObjects must be positive, got %d", c.Model.MaxObjects)
	check(c.Model.MaxSizeGB > 0 && c.Model.MaxSizeGB <= 9e9, "model.maxSizeGB must be positive (and at most 9e9), got %g", c.Model.MaxSizeGB)
	check((c.Broadcast.DB.CertFile == "") == (c.Broadcast.DB.KeyFile == ""), "broadcast.db.certFile and broadcast.db.keyFile go together")
	switch c.Cache.Huge {
	case "never", "always", "within_size", "advise":
	default:
		errs = append(errs, fmt.Errorf("cache.huge must be never, always, within_size or advise, got %q", c.Cache.Huge))
	}
	return errors.Join(errs...)
}

// ExpireAfter is ExpireTimeSec as a duration.
func (c Config) ExpireAfter() time.Duration { return time.Duration(c.ExpireTimeSec) * time.Second }

// SoftCapBytes is MaxCacheAdviseGB in bytes (0: no cap).
func (c Config) SoftCapBytes() int64 { return int64(c.Prefetch.MaxCacheAdviseGB * 1e9) }

// MaxModelBytes is Model.MaxSizeGB in bytes.
func (c Config) MaxModelBytes() int64 { return int64(c.Model.MaxSizeGB * 1e9) }

// Concurrency is the number of parallel ranged GETs: vcpus × workers.
func (c Config) Concurrency() int { return c.Prefetch.VCPUs * c.Prefetch.Workers }

// HugeOption is the tmpfs huge= value to mount with ("" for never).
func (c Config) HugeOption() string {
	if c.Cache.Huge == "never" {
		return ""
	}
	return c.Cache.Huge
}

// String describes the database without its password (also the one a URL may carry).
func (d DB) String() string {
	pass := ""
	if d.Password != "" {
		pass = " password=****"
	}
	u := d.URL
	if at := strings.LastIndex(u, "@"); at >= 0 {
		if scheme := strings.Index(u, "://"); scheme >= 0 && scheme < at {
			u = u[:scheme+3] + "****" + u[at:]
		}
	}
	return fmt.Sprintf("{host=%s port=%d username=%s%s url=%s tls=%v}", d.Host, d.Port, d.Username, pass, u, d.TLS)
}

// GoString keeps %#v from printing the password.
func (d DB) GoString() string { return "config.DB" + d.String() }

// MarshalLog keeps structured loggers from printing the password.
func (d DB) MarshalLog() any { return d.String() }
