package proxy

import (
	"strings"
	"testing"
)

// Issue 26: an RDB format name the proxy does not know is refused at
// start, globally or per user, with the known names.
func TestRDBFormatConfig(t *testing.T) {
	cases := []struct{ body, want string }{
		{"master:\n  addr: x:1\nreplicas:\n  rdb_format: redis-9.9\n", `replicas.rdb_format: unknown RDB format "redis-9.9" (known: redis-6.2, redis-7.0`},
		{"master:\n  addr: x:1\nusers:\n  - {name: old, password: pw, role: replica, rdb_format: redis7}\n", `users[0] (old): rdb_format: unknown RDB format "redis7"`},
	}
	for _, c := range cases {
		cfg, err := LoadConfig(writeConfig(t, c.body))
		if err == nil {
			err = cfg.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("config %q: error %v, want it to mention %q", c.body, err, c.want)
		}
	}
	cfg, err := LoadConfig(writeConfig(t, "master:\n  addr: x:1\nreplicas:\n  rdb_format: Redis-7.2\n  rdb_convert_lossy: yes\n"+
		"users:\n  - {name: old, password: pw, role: replica, rdb_format: redis-7.0}\n"))
	var r Resolved
	if err == nil {
		r, err = cfg.Resolve()
	}
	if err != nil {
		t.Fatal(err)
	}
	if f := r.userFormats["old"]; f.Name != "redis-7.0" || !cfg.Replicas.RDBConvertLossy {
		t.Fatalf("user format %+v, lossy %v", f, cfg.Replicas.RDBConvertLossy)
	}
}

// Review of issue 26: replicas.rdb_convert_rate refuses negative, huge and
// malformed values with the line, and a cap so low a conversion would
// never end (a unit left out: "1" for "1mb") with its name.
func TestRDBConvertRateConfig(t *testing.T) {
	for v, want := range map[string]string{
		"-1":    `line 4: "-1" is not a size`,
		"-5mb":  `line 4: "-5mb" is not a size`,
		"1e30":  `line 4: "1e30" is too large`,
		"fast":  `line 4: "fast" is not a size`,
		"1":     "replicas.rdb_convert_rate 1 bytes per second: at least 64KiB",
		"65535": "replicas.rdb_convert_rate 65535 bytes per second: at least 64KiB",
	} {
		cfg, err := LoadConfig(writeConfig(t, "master:\n  addr: x:1\nreplicas:\n  rdb_convert_rate: "+v+"\n"))
		if err == nil {
			err = cfg.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("rdb_convert_rate %s: error %v, want it to mention %q", v, err, want)
		}
	}
	for v, want := range map[string]Size{"0": 0, "64KiB": 64 << 10, "16mb": 16 << 20, "9223372036854775807": 1<<63 - 1} {
		cfg, err := LoadConfig(writeConfig(t, "master:\n  addr: x:1\nreplicas:\n  rdb_convert_rate: "+v+"\n"))
		if err == nil {
			err = cfg.Validate()
		}
		if err != nil || cfg.Replicas.RDBConvertRate != want {
			t.Errorf("rdb_convert_rate %s: %d (%v), want %d", v, cfg.Replicas.RDBConvertRate, err, want)
		}
	}
}
