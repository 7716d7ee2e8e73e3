package proxy_test

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// Issue 27 review: a SIGHUP with a config that Resolve refuses (checked
// once, in loadConfig, where Reload itself used to check it) changes
// nothing: the error is logged by name, the link stays on its master even
// though the bad file names another, and replicas keep being fed. A good
// file after it still applies master.addr.
func TestReloadRefusedKeepsTheRunningConfig(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	s := redisproc.Start(t, append(masterArgs, "--replicaof", "127.0.0.1", strconv.Itoa(m.Port))...)
	tp := newProcessProxy(t, proxyConfig(t, m.Addr()))
	r := redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(tp.port))
	if _, err := m.Do("SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	redisproc.WaitInSync(t, syncTimeout, m, s, r)
	if err := s.ReplicaOf("", 0); err != nil {
		t.Fatal(err)
	}
	confPath := tp.logPath + ".yaml"
	good := tp.cfg
	good.Master.Addr = s.Addr()

	for i, bad := range []struct{ edit, want string }{
		{"backlog.fsync empty", `backlog.fsync: fsync policy \"\": want always, everysec or no`},
		{"maxclients 0", "maxclients 0: must be at least 1"},
		{"replicas.timeout 0", "replicas.timeout 0s: must be at least 1s"},
	} {
		cfg := good // names the other master: a refused file must not move the link
		switch i {
		case 0:
			cfg.Backlog.Fsync = ""
		case 1:
			cfg.MaxClients = 0
		case 2:
			cfg.Replicas.Timeout = 0
		}
		raw, _ := yaml.Marshal(cfg)
		os.WriteFile(confPath, raw, 0o644)
		tp.cmd.Process.Signal(syscall.SIGHUP)
		redisproc.Eventually(t, 10*time.Second, "the refused reload logged ("+bad.edit+")", func() (bool, string) {
			raw, _ := os.ReadFile(tp.logPath)
			return strings.Contains(string(raw), "config reload failed; keeping the running configuration") &&
				strings.Contains(string(raw), bad.want), ""
		})
	}
	if port := tp.info("replication")["master_port"]; port != strconv.Itoa(m.Port) {
		t.Fatalf("after refused reloads the proxy follows port %s, want %d", port, m.Port)
	}
	if _, err := m.Do("SET", "k", "after refused reloads"); err != nil {
		t.Fatal(err)
	}
	redisproc.WaitInSync(t, syncTimeout, m, r)
	if raw, _ := os.ReadFile(tp.logPath); strings.Contains(string(raw), `"message":"config reloaded"`) {
		t.Fatal("a refused config was reported as reloaded")
	}

	raw, _ := yaml.Marshal(good)
	os.WriteFile(confPath, raw, 0o644)
	tp.cmd.Process.Signal(syscall.SIGHUP)
	redisproc.Eventually(t, 20*time.Second, "the proxy to follow the reloaded master", func() (bool, string) {
		info := tp.info("replication")
		return info["master_port"] == strconv.Itoa(s.Port) && info["master_link_status"] == "up", info["master_port"]
	})
	if _, err := s.Do("SET", "k", "after the good reload"); err != nil {
		t.Fatal(err)
	}
	redisproc.WaitInSync(t, syncTimeout, s, r)
	if raw, _ := os.ReadFile(tp.logPath); strings.Contains(string(raw), "restart to apply the other changes") {
		t.Fatal("a reload that changed only master.addr warned that other changes need a restart")
	}
}
