package proxy_test

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// AUTH on both sides of the proxy, and INFO/ROLE reading like a chained
// Redis replica's, so redis-cli, Sentinel and exporters understand them.
func TestAuthAndIntrospection(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t)
	// The least a replication user needs, per Redis' docs.
	if _, err := m.Do("ACL", "SETUSER", "repl", "on", ">master-secret", "+psync", "+replconf", "+ping"); err != nil {
		t.Fatal(err)
	}
	cfg := proxyConfig(t, m.Addr())
	cfg.Master.User = "repl"
	cfg.Master.Password = "master-secret"
	cfg.RequirePass = "proxy-secret"
	cfg.MetricsListen = "127.0.0.1:" + strconv.Itoa(redisproc.FreePort(t))
	p := startProxy(t, cfg)
	rep := redisproc.Start(t, "--masterauth", "proxy-secret", "--replicaof", "127.0.0.1", strconv.Itoa(p.port))
	if _, err := m.Do("SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	redisproc.WaitInSync(t, syncTimeout, m, rep)
	if list, _ := m.Do("CLIENT", "LIST", "TYPE", "replica"); !strings.Contains(list.(string), "user=repl") {
		t.Fatalf("the proxy's link did not authenticate as repl: %v", list)
	}

	w, err := dialWire(cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if got, _ := w.do("INFO"); !strings.HasPrefix(got, "-NOAUTH") {
		t.Fatalf("INFO before AUTH: %q", got)
	}
	if got, _ := w.do("AUTH", "wrong"); !strings.HasPrefix(got, "-WRONGPASS") {
		t.Fatalf("AUTH with a wrong password: %q", got)
	}
	if got, _ := w.do("AUTH", "proxy-secret"); got != "+OK" {
		t.Fatalf("AUTH: %q", got)
	}
	info, err := w.do("INFO")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"role:slave", "master_host:127.0.0.1", "master_port:" + strconv.Itoa(m.Port), "master_link_status:up",
		"slave_priority:0", "connected_slaves:1", "master_replid:" + m.Info("replication")["master_replid"],
		"repl_backlog_active:1", "replproxy_version:test", "tcp_port:" + strconv.Itoa(p.port),
		"sync_full:1", "sync_partial_ok:0", "sync_partial_err:0", "slave0:ip=127.0.0.1,port=" + strconv.Itoa(rep.Port) + ",state=online",
	}
	for _, line := range want {
		if !strings.Contains(info, line) {
			t.Errorf("INFO lacks %q", line)
		}
	}
	fields := p.info("server")
	if len(fields["run_id"]) != 40 {
		t.Errorf("run_id %q is not 40 characters", fields["run_id"])
	}
	role, err := w.do("ROLE")
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(role, "\n")
	if len(parts) != 5 || parts[0] != "slave" || parts[1] != "127.0.0.1" || parts[3] != "connected" {
		t.Fatalf("ROLE: %q", role)
	}

	res, err := http.Get("http://" + cfg.MetricsListen + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	for _, metric := range []string{"replproxy_upstream_link_up 1", "replproxy_replicas 1", "replproxy_repl_offset ",
		`replproxy_downstream_syncs_total{kind="full"} 1`, "replproxy_replica_lag_bytes{replica=", "process_resident_memory_bytes"} {
		if !strings.Contains(string(body), metric) {
			t.Errorf("/metrics lacks %q", metric)
		}
	}
}

// A master that is down is retried with backoff, and the log says why.
func TestBackoffWhileMasterIsDown(t *testing.T) {
	t.Parallel()
	p := startProxy(t, proxyConfig(t, "127.0.0.1:"+strconv.Itoa(redisproc.FreePort(t))))
	time.Sleep(3 * time.Second)
	log := tail(p.logPath, 1000)
	attempts := strings.Count(log, `"to":"connecting"`)
	if attempts < 2 || attempts > 6 {
		t.Fatalf("%d connection attempts in 3s; want a few, with backoff", attempts)
	}
	if !strings.Contains(log, "connection refused") {
		t.Fatalf("the log does not give the reason:\n%s", log)
	}
	if got := p.info("replication")["master_link_status"]; got != "down" {
		t.Fatalf("master_link_status %q", got)
	}
}
