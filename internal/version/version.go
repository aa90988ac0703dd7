// Package version reports the build's version.
package version

import "runtime/debug"

// version is stamped at build time: -ldflags "-X github.com/modelcast/modelcast/internal/version.version=v0.1.0".
var version = ""

// Get returns the stamped version, else the module version or VCS revision Go recorded, else "devel".
func Get() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v := bi.Main.Version; v != "" && v != "(devel)" {
			return v
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return "devel-" + s.Value[:12]
			}
		}
	}
	return "devel"
}
