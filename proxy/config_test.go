package proxy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
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
		{"master:\n  cluster:\n    seeds: [h:1]\n    shard: \"5460\"\n", "a slot number cannot name a shard"},
		{"master:\n  cluster:\n    seeds: [h:1]\n    shard: primary-a\n", "40-hex-digit node ID"},
		{"master:\n  addr: x:1\n  cluster:\n    seeds: [h:1]\n    shard: " + nodeID('a') + "\n", "master.cluster excludes master.addr"},
		{"master:\n  cluster:\n    seeds: [h]\n    shard: " + nodeID('a') + "\n", `seeds entry "h": want host:port`},
		{"pipelines:\n  - {name: a, listen: 'x:1', shard: " + nodeID('a') + "}\n", "pipelines need master.cluster.seeds"},
		{"master:\n  cluster:\n    seeds: [h:1]\npipelines:\n  - {name: a, listen: 'x:1', shard: " + nodeID('a') + "}\n  - {name: b, listen: 'x:1', shard: " + nodeID('b') + "}\n", "pipelines a and b have the same listen x:1"},
		{"master:\n  cluster:\n    seeds: [h:1]\npipelines:\n  - {name: ../a, listen: 'x:1', shard: " + nodeID('a') + "}\n", `pipelines[0].name "../a"`},
		{"master:\n  cluster:\n    seeds: [h:1]\npipelines:\n  - {name: a, listen: 'x:1', shard: '12'}\n", "pipeline a: master.cluster.shard \"12\": a slot number"},
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

func nodeID(c byte) string { return strings.Repeat(string(c), 40) }

// The cluster's nodes usually share one password: without its own,
// master.cluster uses the master's for CLUSTER SHARDS.
func TestClusterCredentialsDefaultToTheMasters(t *testing.T) {
	cfg := Defaults()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.Master.User, cfg.Master.Password = "repl", "secret"
	cfg.Master.Cluster.Seeds = []string{"127.0.0.1:1"}
	cfg.Master.Cluster.Shard = nodeID('d')
	p, err := New(cfg, zerolog.Nop(), "test")
	if err != nil {
		t.Fatal(err)
	}
	defer p.store.Close()
	defer p.ln.Close()
	if got := p.cluster.cfg; got.User != "repl" || got.Password != "secret" {
		t.Fatalf("cluster credentials %q/%q, want the master's", got.User, got.Password)
	}
}
