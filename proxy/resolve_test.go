package proxy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/fanout"
)

// Issue 27, point 2: fsync's default, everysec (README, config.yaml), is
// filled in by Defaults alone; an empty value is refused with the policies
// it may be, where it silently became everysec.
func TestConfigEmptyFsyncRefused(t *testing.T) {
	for _, body := range []string{"", "backlog:\n  fsync:\n"} { // left out, or null (YAML's "no value")
		cfg, err := LoadConfig(writeConfig(t, "master:\n  addr: x:1\n"+body))
		if err != nil {
			t.Fatal(err)
		}
		if r, err := cfg.Resolve(); err != nil || r.Backlog.Fsync != backlog.FsyncEverySec {
			t.Fatalf("config %q: fsync %q, %v; want the default everysec", body, r.Backlog.Fsync, err)
		}
	}
	const want = `backlog.fsync: fsync policy "": want always, everysec or no`
	cfg, err := LoadConfig(writeConfig(t, "master:\n  addr: x:1\nbacklog:\n  fsync: \"\"\n"))
	if err == nil {
		_, err = cfg.Resolve()
	}
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("fsync: \"\": error %v, want it to mention %q", err, want)
	}
	cfg.Backlog.Fsync = ""
	if _, err := cfg.Resolve(); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("a Config with no fsync policy: error %v, want %q", err, want)
	}
}

// Resolve reads secrets into its own copy: the caller's Config still
// names the files, so a restart or a SIGHUP reads them again.
func TestResolveLeavesTheConfigAlone(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(pw, []byte("replica-secret\n"), 0o600)
	cfg, err := LoadConfig(writeConfig(t, "master:\n  addr: x:1\nusers:\n  - {name: repl, password_file: "+pw+", role: replica}\n"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := cfg.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	if r.Users[0].Password != "replica-secret" || len(r.users) != 1 || r.users[0].Name != "repl" {
		t.Fatalf("resolved users %+v, %+v", r.Users, r.users)
	}
	if cfg.Users[0].PasswordFile != pw || cfg.Users[0].Password != "" {
		t.Fatalf("Resolve changed the caller's users: %+v", cfg.Users)
	}
}

// Issue 27, point 2: the limits handed to the downstream server have one
// default, Defaults; replicas.timeout 0 is refused where the server took
// it for its own 60s.
func TestConfigReplicasTimeoutZeroRefused(t *testing.T) {
	cfg, err := LoadConfig(writeConfig(t, "master:\n  addr: x:1\nreplicas:\n  timeout: 0s\n"))
	if err == nil {
		_, err = cfg.Resolve()
	}
	if want := "replicas.timeout 0s: must be at least 1s"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("replicas.timeout 0s: error %v, want %q", err, want)
	}
	cfg = Defaults()
	cfg.Master.Addr = "x:1"
	r, err := cfg.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	f := fanoutConfig(r, nil, 0, "", zerolog.Nop())
	if f.ReplTimeout != time.Minute || f.MaxClients != 10000 || f.AuthTimeout != 10*time.Second ||
		f.MultiMaxCommands != 1000 || f.MultiMaxBytes != 1<<20 || f.UnauthMaxMemory != fanout.DefaultUnauthMaxMemory {
		t.Fatalf("the downstream server's limits from Defaults: %+v", f)
	}
}
