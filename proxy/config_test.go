package proxy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestExampleConfigLoads(t *testing.T) {
	cfg, err := LoadConfig("../config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("config.yaml does not validate: %v", err)
	}
}

func TestConfigUnitsAndDefaults(t *testing.T) {
	cfg, err := LoadConfig(writeConfig(t, "master:\n  addr: 10.0.0.1:6379\n  repl_timeout: 90s\nbacklog:\n  max_bytes: 100GiB\n  fsync: always\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Backlog.MaxBytes != 100<<30 || cfg.Backlog.SegmentBytes != 64<<20 {
		t.Fatalf("sizes %d %d", cfg.Backlog.MaxBytes, cfg.Backlog.SegmentBytes)
	}
	if time.Duration(cfg.Master.ReplTimeout) != 90*time.Second || cfg.Listen != "127.0.0.1:6380" {
		t.Fatalf("durations/defaults: %+v", cfg)
	}
}

// A bad config names what is wrong, so an operator can fix it at once.
func TestConfigErrorsAreClear(t *testing.T) {
	cases := []struct{ body, want string }{
		{"master:\n  adr: x:1\n", "field adr not found"},
		{"master:\n  addr: x:1\nbacklog:\n  max_bytes: lots\n", `"lots" is not a size`},
		{"master:\n  addr: x:1\n  repl_timeout: soon\n", `"soon" is not a duration`},
		{"master:\n  addr: x:1\nbacklog:\n  fsync: sometimes\n", `fsync policy "sometimes"`},
		{"listen: 6380\nmaster:\n  addr: x:1\n", "listen \"6380\": want host:port"},
		{"backlog:\n  fsync: always\n", "master.addr is required"},
		{"master:\n  addr: x:1\nsnapshot:\n  min_interval: 500ms\n", "snapshot.min_interval 500ms: must be at least 1s"},
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
}
