package config

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func write(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func noEnv(string) string { return "" }

func TestDefaults(t *testing.T) {
	c, err := Load(filepath.Join(t.TempDir(), "absent.json"), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, Default()) {
		t.Errorf("missing file: %+v, want the defaults %+v", c, Default())
	}
	if c.ExpireAfter().Seconds() != 120 || c.Concurrency() != 256 || c.BindPort != 19898 || c.SoftCapBytes() != 0 ||
		c.Broadcast.Chains != 1 || c.Broadcast.DB.Port != 6379 || !*c.Cache.Tmpfs || c.HugeOption() != "within_size" ||
		c.Model.MaxObjects != 100_000 || c.MaxModelBytes() != 4000e9 || c.Broadcast.CongestionControl != "cubic" {
		t.Errorf("defaults: %+v", c)
	}
}

// TestModelBounds: model.maxObjects and model.maxSizeGB come from the file.
func TestModelBounds(t *testing.T) {
	c, err := Load(write(t, `{"model": {"maxObjects": 250000, "maxSizeGB": 1500.5}}`), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if c.Model.MaxObjects != 250_000 || c.MaxModelBytes() != 1500.5e9 {
		t.Errorf("model bounds %+v, %d bytes; want 250000 objects and 1500.5 GB", c.Model, c.MaxModelBytes())
	}
}

// TestSeedFile loads OSS Connector's own example files unchanged.
func TestSeedFile(t *testing.T) {
	p := write(t, `{
		"logLevel": 1,
		"logPath": "/var/log/oss-connector/connector.log",
		"auditPath": "/var/log/oss-connector/audit.log",
		"expireTimeSec": 300,
		"prefetch": {"vcpus": 16, "workers": 24, "maxCacheAdviseGB": 100},
		"broadcast": {"enableBroadcast": true, "tenant": "team-a",
			"db": {"host": "r-bp1.redis.rds.aliyuncs.com", "port": 6380, "username": "u", "password": "p"}},
		"bindPort": 19999
	}`)
	c, err := Load(p, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	if c.ExpireTimeSec != 300 || c.Concurrency() != 16*24 || c.SoftCapBytes() != 100e9 || !c.Broadcast.EnableBroadcast ||
		c.Broadcast.Tenant != "team-a" || c.Broadcast.DB.Host != "r-bp1.redis.rds.aliyuncs.com" || c.Broadcast.DB.Port != 6380 || c.BindPort != 19999 {
		t.Errorf("seed file: %+v", c)
	}
}

func TestEnvironmentWins(t *testing.T) {
	p := write(t, `{"prefetch": {"maxCacheAdviseGB": 100}}`)
	env := func(k string) string {
		if k == EnvMaxCacheAdviseGB {
			return "40"
		}
		return ""
	}
	c, err := Load(p, env)
	if err != nil {
		t.Fatal(err)
	}
	if c.SoftCapBytes() != 40e9 {
		t.Errorf("soft cap %d, want the environment's 40 GB", c.SoftCapBytes())
	}
	bad := func(k string) string {
		if k == EnvMaxCacheAdviseGB {
			return "lots"
		}
		return ""
	}
	if _, err := Load(p, bad); err == nil || !strings.Contains(err.Error(), EnvMaxCacheAdviseGB) {
		t.Errorf("bad environment value: %v", err)
	}
}

func TestRedisCredentialsFromEnvironment(t *testing.T) {
	p := write(t, `{"broadcast": {"db": {"host": "redis", "username": "file-user", "password": "file-pass"}}}`)
	c, err := Load(p, noEnv)
	if err != nil || c.Broadcast.DB.Username != "file-user" || c.Broadcast.DB.Password != "file-pass" {
		t.Fatalf("from the file: %v, %v", c.Broadcast.DB, err)
	}
	env := map[string]string{EnvRedisUsername: "env-user", EnvRedisPassword: "env-pass"}
	c, err = Load(p, func(k string) string { return env[k] })
	if err != nil || c.Broadcast.DB.Username != "env-user" || c.Broadcast.DB.Password != "env-pass" || c.Broadcast.DB.Host != "redis" {
		t.Errorf("the environment should win: %v, %v", c.Broadcast.DB, err)
	}
}

func TestRejects(t *testing.T) {
	for _, tc := range []struct{ content, hint string }{
		{`{"expireTimeSecs": 10}`, `unknown field "expireTimeSecs"`},
		{`{"prefetch": {"vcpu": 4}}`, `unknown field "vcpu"`},
		{`{"expireTimeSec": -1}`, "expireTimeSec must be positive"},
		{`{"prefetch": {"workers": -2}}`, "prefetch.vcpus and prefetch.workers"},
		{`{"bindPort": 70000}`, "bindPort must be a TCP port"},
		{`{"cache": {"huge": "sometimes"}}`, "cache.huge"},
		{`{"prefetch": {"maxCacheAdviseGB": -5}}`, "maxCacheAdviseGB"},
		{`{"model": {"maxObjects": -1}}`, "model.maxObjects must be positive"},
		{`{"model": {"maxSizeGB": -1}}`, "model.maxSizeGB must be positive"},
		{`{"model": {"maxSizeGB": 1e10}}`, "model.maxSizeGB must be positive (and at most 9e9)"},
		{`{"model": {"maxObject": 10}}`, `unknown field "maxObject"`},
		{`{"bindPort": "19898"}`, "cannot unmarshal"},
		{`{"broadcast": {"congestionControl": "BBR"}}`, `broadcast.congestionControl: "BBR" is not a TCP congestion control name`},
		{`{"broadcast": {"congestionControl": "cubic; reno"}}`, "broadcast.congestionControl"},
		{`{"broadcast": {"congestionControl": "sixteen_chars_xx"}}`, "broadcast.congestionControl"},
		{`{`, "unexpected EOF"},
	} {
		if _, err := Load(write(t, tc.content), noEnv); err == nil || !strings.Contains(err.Error(), tc.hint) {
			t.Errorf("%s: %v, want an error saying %q", tc.content, err, tc.hint)
		}
	}
}

// TestCongestionControl: a kernel name or "system" is taken as written; whether the kernel
// offers it is the data plane's to find out (pkg/broadcast).
func TestCongestionControl(t *testing.T) {
	for _, name := range []string{"system", "bbr", "reno", "cubic", "fifteen_chars_x"} {
		c, err := Load(write(t, fmt.Sprintf(`{"broadcast": {"congestionControl": %q}}`, name)), noEnv)
		if err != nil || c.Broadcast.CongestionControl != name {
			t.Errorf("%q: %v, %q", name, err, c.Broadcast.CongestionControl)
		}
	}
}

func TestPasswordNeverPrinted(t *testing.T) {
	c := Default()
	c.Broadcast.DB.Password = "redis-pass-123"
	c.Broadcast.DB.URL = "rediss://user:url-pass-456@redis:6380/0"
	for _, s := range []string{fmt.Sprintf("%v", c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c), fmt.Sprint(c.Broadcast.DB)} {
		if strings.Contains(s, "redis-pass-123") || strings.Contains(s, "url-pass-456") {
			t.Errorf("password printed: %s", s)
		}
	}
}
