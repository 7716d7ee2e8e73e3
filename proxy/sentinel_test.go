package proxy_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// startSentinel runs redis-sentinel monitoring the master as "mymaster";
// extra lines are appended to its configuration.
func startSentinel(t *testing.T, masterPort int, extra ...string) string {
	t.Helper()
	dir := t.TempDir()
	port := redisproc.FreePort(t)
	conf := filepath.Join(dir, "sentinel.conf")
	body := fmt.Sprintf(`port %d
bind 127.0.0.1
dir %s
logfile %s
sentinel monitor mymaster 127.0.0.1 %d 2
sentinel down-after-milliseconds mymaster 1000
sentinel failover-timeout mymaster 10000
sentinel parallel-syncs mymaster 5
`, port, dir, filepath.Join(dir, "sentinel.log"), masterPort)
	for _, line := range extra {
		body += line + "\n"
	}
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("redis-sentinel", conf)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-sentinel: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		if t.Failed() {
			t.Logf("sentinel %d log tail:\n%s", port, tail(filepath.Join(dir, "sentinel.log"), 25))
		}
	})
	addr := "127.0.0.1:" + strconv.Itoa(port)
	redisproc.Eventually(t, 10*time.Second, "sentinel up", func() (bool, string) {
		w, err := dialWire(addr)
		if err != nil {
			return false, err.Error()
		}
		defer w.Close()
		got, err := w.do("PING")
		return got == "+PONG", fmt.Sprint(got, err)
	})
	return addr
}

// sentinelMaster reads SENTINEL MASTER mymaster as a field map.
func sentinelMaster(addr string) map[string]string {
	w, err := dialWire(addr)
	if err != nil {
		return nil
	}
	defer w.Close()
	got, err := w.do("SENTINEL", "MASTER", "mymaster")
	if err != nil {
		return nil
	}
	parts := strings.Split(got, "\n")
	out := map[string]string{}
	for i := 0; i+1 < len(parts); i += 2 {
		out[parts[i]] = parts[i+1]
	}
	return out
}

// Issue 5, point 2: three sentinels watch M, with S and the proxy P as its
// replicas. M dies: Sentinel promotes S, never P (slave_priority 0); P
// follows on its own, partially, and P's replicas end equal to S.
func TestSentinelFailover(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	s := redisproc.Start(t, append(masterArgs, "--replicaof", "127.0.0.1", strconv.Itoa(m.Port))...)
	var sentinels []string
	for i := 0; i < 3; i++ {
		sentinels = append(sentinels, startSentinel(t, m.Port))
	}
	cfg := proxyConfig(t, "")
	cfg.Master.Addr = ""
	cfg.Master.Sentinel.Addrs = sentinels
	cfg.Master.Sentinel.Name = "mymaster"
	r := &relay{master: m, proxy: startProxy(t, cfg)}
	r.addReplica(t)
	r.addReplica(t)
	for _, sn := range sentinels {
		redisproc.Eventually(t, 30*time.Second, "sentinels to know both replicas and each other", func() (bool, string) {
			f := sentinelMaster(sn)
			return f["num-slaves"] == "2" && f["num-other-sentinels"] == "2", fmt.Sprint(f["num-slaves"], " ", f["num-other-sentinels"])
		})
	}
	stopLoad := runLoad(t, m, 41)
	waitOps(t, m, 2000)
	stopLoad()
	redisproc.WaitInSync(t, syncTimeout, m, append([]*redisproc.Server{s}, r.replicas...)...)
	proxyFull := r.proxy.infoInt("stats", "sync_full")

	m.Kill()
	redisproc.Eventually(t, 60*time.Second, "S to be promoted", func() (bool, string) {
		role := s.Info("replication")["role"]
		return role == "master", role
	})
	redisproc.Eventually(t, 30*time.Second, "the proxy to follow S", func() (bool, string) {
		info := r.proxy.info("replication")
		return info["master_port"] == strconv.Itoa(s.Port) && info["master_link_status"] == "up",
			info["master_port"] + " " + info["master_link_status"]
	})
	stopLoad = runLoad(t, s, 42)
	waitOps(t, s, 1000)
	stopLoad()
	redisproc.WaitInSync(t, syncTimeout, s, r.replicas...)
	expectInt(t, "S sync_full", s.InfoInt("stats", "sync_full"), 0)
	if got := s.InfoInt("stats", "sync_partial_ok"); got < 1 {
		t.Fatalf("S sync_partial_ok %d: the proxy did not follow partially", got)
	}
	expectInt(t, "proxy upstream_full_syncs", r.proxy.infoInt("stats", "upstream_full_syncs"), 1)
	expectInt(t, "proxy sync_full", r.proxy.infoInt("stats", "sync_full"), proxyFull)
	if got := r.proxy.info("replication")["role"]; got != "slave" {
		t.Fatalf("the proxy reports role %s", got)
	}
	for _, sn := range sentinels {
		redisproc.Eventually(t, 30*time.Second, "sentinel to list the proxy as a healthy replica of S", func() (bool, string) {
			flags := replicaFlags(sn, r.proxy.port)
			return flags == "slave", flags
		})
	}
}

// replicaFlags finds the flags Sentinel keeps for the replica at port.
func replicaFlags(sentinel string, port int) string {
	w, err := dialWire(sentinel)
	if err != nil {
		return err.Error()
	}
	defer w.Close()
	got, err := w.do("SENTINEL", "REPLICAS", "mymaster")
	if err != nil {
		return err.Error()
	}
	parts := strings.Split(got, "\n")
	for i := 0; i+1 < len(parts); i++ {
		if parts[i] != "port" || parts[i+1] != strconv.Itoa(port) {
			continue
		}
		for j := i; j+1 < len(parts); j += 2 {
			if parts[j] == "flags" {
				return parts[j+1]
			}
		}
	}
	return "not listed"
}
