package proxy

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// Issue 22, point 3: sizes read as redis.conf reads them. Every spelling
// Redis knows is given to a real redis-server (CONFIG SET of a memory
// setting, which Redis parses with its memtoull) and must mean the same
// bytes here; the IEC units and fractions are this proxy's own.
func TestSizesReadAsRedisReadsThem(t *testing.T) {
	redisSpellings := []string{
		"0", "1", "123", "1b", "1B",
		"1k", "1K", "1kb", "1KB", "1Kb",
		"1m", "1M", "1mb", "1MB", "64m", "64mb", "64MB",
		"1g", "1G", "1gb", "1GB", "5gb", "100g",
	}
	want := map[string]int64{
		"1k": 1000, "1kb": 1024, "1m": 1_000_000, "1mb": 1 << 20,
		"1g": 1_000_000_000, "1gb": 1 << 30, "64mb": 64 << 20, "64m": 64_000_000,
	}
	srv := redisproc.Start(t)
	for _, s := range redisSpellings {
		got, err := ParseSize(s)
		if err != nil {
			t.Errorf("ParseSize(%q): %v", s, err)
			continue
		}
		if w, ok := want[s]; ok && int64(got) != w {
			t.Errorf("ParseSize(%q) = %d, want %d", s, got, w)
		}
		// 0 is out of the setting's range; the table above covers it.
		if s == "0" {
			continue
		}
		if _, err := srv.Do("CONFIG", "SET", "active-defrag-ignore-bytes", s); err != nil {
			t.Fatalf("redis CONFIG SET %q: %v", s, err)
		}
		reply, err := srv.Do("CONFIG", "GET", "active-defrag-ignore-bytes")
		if err != nil {
			t.Fatal(err)
		}
		redisBytes, err := strconv.ParseInt(fmt.Sprint(reply.([]any)[1]), 10, 64)
		if err != nil {
			t.Fatalf("CONFIG GET after %q: %v %v", s, reply, err)
		}
		if int64(got) != redisBytes {
			t.Errorf("%q: replproxy reads %d bytes, Redis %d", s, got, redisBytes)
		}
	}

	own := map[string]int64{
		"1KiB": 1 << 10, "512MiB": 512 << 20, "1GiB": 1 << 30, "2TiB": 2 << 40,
		"1.5GiB": 3 << 29, "1 GiB": 1 << 30, "1t": 1e12, "1tb": 1 << 40, "1048576": 1 << 20,
	}
	for s, w := range own {
		if got, err := ParseSize(s); err != nil || int64(got) != w {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", s, got, err, w)
		}
	}
	for _, s := range []string{"lots", "-1", "-1k", "1x", "", "1e400", "9000000000gb", "NaN"} {
		if got, err := ParseSize(s); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", s, got)
		}
	}
}

// A size error shows the bytes a value was read as, and 64mb is one
// default segment, not "less than one segment".
func TestSizeErrorsShowTheBytes(t *testing.T) {
	cfg, err := LoadConfig(writeConfig(t, "master:\n  addr: x:1\nbacklog:\n  max_bytes: 64mb\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("max_bytes 64mb with 64MiB segments: %v", err)
	}
	cfg, err = LoadConfig(writeConfig(t, "master:\n  addr: x:1\nbacklog:\n  max_bytes: 64m\n"))
	if err != nil {
		t.Fatal(err)
	}
	err = cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), "backlog.max_bytes is 64000000 bytes (61.0 MiB)") ||
		!strings.Contains(err.Error(), "segment_bytes is 67108864 bytes (64.0 MiB)") {
		t.Fatalf("max_bytes 64m: %v", err)
	}
	cfg, err = LoadConfig(writeConfig(t, "master:\n  addr: x:1\nbacklog:\n  segment_bytes: 1000k\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "1000000 bytes (976.6 KiB)") {
		t.Fatalf("segment_bytes 1000k: %v", err)
	}
}
