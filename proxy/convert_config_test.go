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
