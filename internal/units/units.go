// Package units formats byte counts for people, in decimal units as OSS Connector's reports
// do.
package units

import "fmt"

// Bytes formats n with one decimal in decimal units: "0 B", "512 B", "1.5 MB", "135.4 GB".
func Bytes(n int64) string {
	const prefixes = "kMGTPE"
	if n < 1000 {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n)/1000, 0
	for v >= 999.95 && i < len(prefixes)-1 {
		v /= 1000
		i++
	}
	return fmt.Sprintf("%.1f %cB", v, prefixes[i])
}
