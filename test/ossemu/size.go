package ossemu

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ParseSize parses a byte count such as "1048576", "256MiB", "1.5GiB" or
// "125MB": decimal (kB, MB, GB, TB) and binary (KiB, MiB, GiB, TiB) units,
// case-insensitive, "B" optional after a binary unit ("256Mi").
func ParseSize(s string) (int64, error) {
	num, unit := splitUnit(s)
	mult, ok := byteUnit(strings.ToLower(unit))
	if !ok {
		return 0, fmt.Errorf("size %q: unknown unit %q", s, unit)
	}
	return scale(s, num, mult)
}

// ParseRate parses a rate in bytes per second: a size as ParseSize reads
// it ("125MB"), or bits with a "bit" unit ("1Gbit", "100Mbit"); a "/s" or
// "ps" suffix is allowed ("1Gbps", "125MB/s").
func ParseRate(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSpace(s), "/s")
	num, unit := splitUnit(t)
	lu := strings.ToLower(unit)
	if b, ok := strings.CutSuffix(lu, "bps"); ok {
		lu = b + "bit" // "Gbps" is gigabits
	}
	if b, ok := strings.CutSuffix(lu, "bit"); ok {
		mult, ok := byteUnit(b + "b")
		if b == "" {
			mult, ok = 1, true
		}
		if !ok {
			return 0, fmt.Errorf("rate %q: unknown unit %q", s, unit)
		}
		bits, err := scale(s, num, mult)
		return bits / 8, err
	}
	mult, ok := byteUnit(lu)
	if !ok {
		return 0, fmt.Errorf("rate %q: unknown unit %q", s, unit)
	}
	return scale(s, num, mult)
}

func splitUnit(s string) (num, unit string) {
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	if i < 0 {
		return s, ""
	}
	return s[:i], strings.TrimSpace(s[i:])
}

func byteUnit(u string) (float64, bool) {
	switch u {
	case "", "b":
		return 1, true
	case "k", "kb":
		return 1e3, true
	case "m", "mb":
		return 1e6, true
	case "g", "gb":
		return 1e9, true
	case "t", "tb":
		return 1e12, true
	case "ki", "kib":
		return 1 << 10, true
	case "mi", "mib":
		return 1 << 20, true
	case "gi", "gib":
		return 1 << 30, true
	case "ti", "tib":
		return 1 << 40, true
	}
	return 0, false
}

func scale(s, num string, mult float64) (int64, error) {
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("%q is not a non-negative number with a unit", s)
	}
	v := math.Round(f * mult)
	if v > math.MaxInt64 {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return int64(v), nil
}
