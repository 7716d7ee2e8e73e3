// Package rdbconvert re-encodes an RDB snapshot for a replica that cannot
// load the master's format (an older Redis, or Valkey from Redis), key by
// key, with github.com/hdt3213/rdb's decoder and encoder.
package rdbconvert

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Format names what a replica loads: the highest REDIS00vv and VALKEYvvv
// versions its rdbLoad accepts.
type Format struct {
	Name   string
	Redis  int // highest REDIS version it loads
	Valkey int // highest VALKEY version it loads; 0: none
}

// maxType is the highest object type each RDB version holds (rdb.h).
var maxType = map[int]byte{9: 15, 10: 19, 11: 21, 12: 25}

// minTarget is the oldest RDB version Convert writes: RDB 9 (Redis 6.2)
// lacks function libraries and the listpack types it would re-encode
// into, and is not tested.
const minTarget = 10

// formats lists the targets by name, with the RDB_VERSION of each
// server's rdb.h (Valkey 9 added the VALKEY080 magic and still loads
// Redis' format up to 11).
var formats = []Format{
	{Name: "redis-6.2", Redis: 9},
	{Name: "redis-7.0", Redis: 10},
	{Name: "redis-7.2", Redis: 11},
	{Name: "redis-7.4", Redis: 12},
	{Name: "valkey-7.2", Redis: 11},
	{Name: "valkey-8.0", Redis: 11},
	{Name: "valkey-8.1", Redis: 11},
	{Name: "valkey-9.0", Redis: 11, Valkey: 80},
}

// ParseFormat reads a format name such as "redis-7.2"; "" is no format.
func ParseFormat(name string) (Format, error) {
	if name == "" {
		return Format{}, nil
	}
	for _, f := range formats {
		if f.Name == strings.ToLower(name) {
			return f, nil
		}
	}
	return Format{}, fmt.Errorf("unknown RDB format %q (known: %s)", name, strings.Join(Names(), ", "))
}

// Names lists the known format names.
func Names() []string {
	var out []string
	for _, f := range formats {
		out = append(out, f.Name)
	}
	return out
}

// ForValkey is the format of a replica that announced its version with
// REPLCONF version; only Valkey 8 and later do.
func ForValkey(version string) (Format, bool) {
	major, _, ok := strings.Cut(version, ".")
	if !ok {
		return Format{}, false
	}
	n, err := strconv.Atoi(major)
	if err != nil || n < 7 {
		return Format{}, false
	}
	switch {
	case n >= 9:
		f, _ := ParseFormat("valkey-9.0")
		return f, true
	case n == 8:
		f, _ := ParseFormat("valkey-8.0")
		return f, true
	}
	f, _ := ParseFormat("valkey-7.2")
	return f, true
}

// IsZero reports whether f names no format.
func (f Format) IsZero() bool { return f.Name == "" }

// Loads reports whether a replica of format f loads an RDB whose header
// is magic (REDIS or VALKEY) and version.
func (f Format) Loads(magic string, version int) bool {
	switch magic {
	case "REDIS":
		return version <= f.Redis
	case "VALKEY":
		return f.Valkey > 0 && version <= f.Valkey
	}
	return false
}

// Convertible says why Convert cannot write for f, or "".
func (f Format) Convertible() string {
	if f.Redis >= minTarget {
		return ""
	}
	return fmt.Sprintf("the converter writes RDB version %d or later and %s loads up to %d", minTarget, f.Name, f.Redis)
}

// Written is the RDB version Convert writes for f: the newest Redis
// format f loads.
func (f Format) Written() int { return min(f.Redis, 12) }

// Known reports whether name is a known format.
func Known(name string) bool { return slices.Contains(Names(), strings.ToLower(name)) }
