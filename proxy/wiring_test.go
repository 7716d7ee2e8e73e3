package proxy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/upstream"
)

// Issue 27 review: after Resolve, every key config.yaml documents for the
// store, the downstream server, the upstream link and the refresher reaches
// the component that uses it. Each value differs from its default, so a
// key dropped or read from the wrong field in the wiring shows here.
func TestEveryKeyReachesItsComponent(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("upstream-secret\n"), 0o600)
	cfg, err := LoadConfig(writeConfig(t, `
data_dir: `+filepath.Join(dir, "data")+`
protected_mode: false
users:
  - {name: r1, password: replica-pass, role: replica, rdb_format: redis-7.0}
maxclients: 123
auth_timeout: 7s
multi_max_commands: 45
multi_max_bytes: 2mb
maxmemory_unauthenticated_clients: 3mb
master:
  addr: 127.0.0.1:7001
  user: up
  password_file: `+pw+`
  repl_timeout: 41s
  connect_timeout: 3s
  announce_port: 7777
  compression: zstd
backlog:
  max_bytes: 96mb
  max_age: 2h
  segment_bytes: 8mb
  fsync: always
  scrub_rate: 3mb
snapshot:
  refresh_after: 20mb
  min_interval: 90s
  keep: 3
  hold_max_bytes: 50mb
  max_refreshes_per_hour: 4
damaged:
  max_bytes: 70mb
replicas:
  timeout: 33s
  max_lag_bytes: 5mb
  max_lag_seconds: 17s
  max_concurrent_full_syncs: 2
  rate_limit: 9mb
  compression: [zstd]
  rdb_format: redis-7.2
  rdb_convert_lossy: true
  rdb_convert_rate: 6mb
ack_mode: replicas
ack_quorum: 2
`))
	if err != nil {
		t.Fatal(err)
	}
	r, err := cfg.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	const mb = 1 << 20
	check := func(key string, got, want any) {
		t.Helper()
		if got != want {
			t.Errorf("%s: the component has %v, want %v", key, got, want)
		}
	}

	f := fanoutConfig(r, nil, 6380, "v", zerolog.Nop())
	check("protected_mode", f.ProtectedMode, false)
	check("maxclients", f.MaxClients, 123)
	check("auth_timeout", f.AuthTimeout, 7*time.Second)
	check("multi_max_commands", f.MultiMaxCommands, 45)
	check("multi_max_bytes", f.MultiMaxBytes, 2*mb)
	check("maxmemory_unauthenticated_clients", f.UnauthMaxMemory, int64(3*mb))
	check("replicas.timeout", f.ReplTimeout, 33*time.Second)
	check("backlog.max_bytes (INFO)", f.BacklogMaxBytes, int64(96*mb))
	check("backlog.fsync (INFO)", f.Fsync, "always")
	check("replicas.max_lag_bytes", f.MaxLagBytes, int64(5*mb))
	check("replicas.max_lag_seconds", f.MaxLag, 17*time.Second)
	check("replicas.max_concurrent_full_syncs", f.MaxConcurrentFullSyncs, 2)
	check("replicas.rate_limit", f.RateLimit, int64(9*mb))
	check("replicas.compression", strings.Join(f.Codecs, ","), "zstd")
	check("replicas.rdb_format", f.RDBFormat.Name, "redis-7.2")
	check("users[].rdb_format", f.UserRDBFormats["r1"].Name, "redis-7.0")
	check("replicas.rdb_convert_lossy", f.RDBConvertLossy, true)
	check("replicas.rdb_convert_rate", f.ConvertRate, int64(6*mb))
	check("converted dir", f.ConvertDir, backlog.Layout(cfg.DataDir).Converted())
	if len(f.Users) != 1 || f.Users[0].Name != "r1" || string(f.Users[0].Role) != "replica" {
		t.Errorf("users: the server has %+v", f.Users)
	}

	l := linkConfig(r.Config, 6380)
	check("master.addr", l.Addr, "127.0.0.1:7001")
	check("master.user", l.User, "up")
	check("master.password_file", l.Password, "upstream-secret")
	check("master.announce_port", l.ListenPort, 7777)
	check("master.repl_timeout", l.ReplTimeout, 41*time.Second)
	check("master.connect_timeout", l.ConnectTimeout, 3*time.Second)
	check("master.compression", strings.Join(l.Codecs, ","), "zstd")
	check("ack_mode", l.AckMode, upstream.AckReplicas)
	check("ack_quorum", l.AckQuorum, 2)
	check("data_dir (link)", l.DataDir, cfg.DataDir)
	check("backlog.segment_bytes (link)", l.SegmentBytes, int64(8*mb))

	rf := refreshConfig(r.Config)
	check("snapshot.refresh_after", rf.AfterBytes, int64(20*mb))
	check("snapshot.min_interval", rf.MinInterval, 90*time.Second)
	check("snapshot.max_refreshes_per_hour", rf.MaxPerHour, 4)
	check("master.repl_timeout (refresh hold)", rf.HoldTimeout, 41*time.Second)

	s := storeOptions(r.Config, zerolog.Nop(), func(float64) {})
	check("backlog.segment_bytes", s.Log.SegmentBytes, int64(8*mb))
	check("backlog.max_bytes", s.Log.MaxBytes, int64(96*mb))
	check("backlog.max_age", s.Log.MaxAge, 2*time.Hour)
	check("backlog.fsync", s.Log.Fsync, backlog.FsyncAlways)
	check("backlog.scrub_rate", s.ScrubRate, int64(3*mb))
	check("snapshot.keep", s.SnapshotKeep, 3)
	check("snapshot.hold_max_bytes", s.Log.HoldMaxBytes, int64(50*mb))
	check("damaged.max_bytes", s.DamagedMaxBytes, int64(70*mb))
}

// Issue 27 review: fanout.New no longer fills in the downstream limits, so
// a zero that reached it would refuse every client (maxclients), close each
// at once (auth_timeout), evict every unauthenticated one or drop every
// replica. Resolve must refuse each of them, by name.
func TestZeroLimitsRefusedByName(t *testing.T) {
	for _, c := range []struct{ body, want string }{
		{"maxclients: 0\n", "maxclients 0"},
		{"auth_timeout: 0s\n", "auth_timeout 0s"},
		{"multi_max_commands: 0\n", "multi_max_commands"},
		{"multi_max_bytes: 0\n", "multi_max_bytes"},
		{"maxmemory_unauthenticated_clients: 0\n", "maxmemory_unauthenticated_clients 0"},
		{"replicas:\n  timeout: 0s\n", "replicas.timeout 0s"},
		{"replicas:\n  timeout: 500ms\n", "replicas.timeout 500ms"},
		{"master:\n  addr: x:1\n  repl_timeout: 0s\n", "master.repl_timeout 0s"},
		// Not a fanout limit, but the same trap: a dialer's 0 is no timeout.
		{"master:\n  addr: x:1\n  connect_timeout: 0s\n", "master.connect_timeout 0s"},
	} {
		body := c.body
		if !strings.HasPrefix(body, "master:") {
			body = "master:\n  addr: x:1\n" + body
		}
		cfg, err := LoadConfig(writeConfig(t, body))
		if err == nil {
			_, err = cfg.Resolve()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want one naming %q", c.body, err, c.want)
		}
	}
	// Every pipeline gets the same checks.
	cfg, err := LoadConfig(writeConfig(t, "maxclients: 0\nmaster:\n  cluster:\n    seeds: ['127.0.0.1:1']\npipelines:\n  - {name: a, listen: '127.0.0.1:1', shard: "+
		strings.Repeat("a", 40)+"}\n"))
	if err == nil {
		_, err = cfg.Resolve()
	}
	if err == nil || !strings.Contains(err.Error(), "pipeline a: maxclients 0") {
		t.Errorf("pipelines with maxclients 0: error %v", err)
	}
}
