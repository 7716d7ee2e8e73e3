package proxy_test

import (
	"context"
	"io"
	"net/http"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/proxy"
)

// scrape reads /metrics into series ("name{labels}") and values.
func scrape(t testing.TB, addr string) map[string]float64 {
	t.Helper()
	res, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad metrics line %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

// ownSeries is the proxy's own series, without Go and process ones.
func ownSeries(m map[string]float64) []string {
	var out []string
	for k := range m {
		if strings.HasPrefix(k, "replproxy_") {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

func httpGet(addr, path string) (int, string) {
	res, err := http.Get("http://" + addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(body)
}

// Point 1: a live proxy under load exposes every series, replicas are
// labelled by ip:port and state only, a replica waiting for a snapshot
// shows as such, and a reconnect makes no new series.
func TestMetricsUnderLoad(t *testing.T) {
	m := redisproc.Start(t)
	// The proxy starts with no master, so its first replica waits for a snapshot.
	cfg := proxyConfig(t, "127.0.0.1:"+strconv.Itoa(redisproc.FreePort(t)))
	cfg.MetricsListen = "127.0.0.1:" + strconv.Itoa(redisproc.FreePort(t))
	p := startProxy(t, cfg)
	rep := redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(p.port))
	name := `replica="127.0.0.1:` + strconv.Itoa(rep.Port) + `"`
	redisproc.Eventually(t, 20*time.Second, "replica waiting for a snapshot", func() (bool, string) {
		got := scrape(t, cfg.MetricsListen)
		return got[`replproxy_replica_state{`+name+`,state="wait_bgsave"}`] == 1, strings.Join(ownSeries(got), "\n")
	})
	if code, body := httpGet(cfg.MetricsListen, "/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz before any data: %d %s", code, body)
	}

	w, err := dialWire(cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if got, err := w.do("REPLICAOF", "127.0.0.1", strconv.Itoa(m.Port)); err != nil || got != "+OK" {
		t.Fatalf("REPLICAOF: %q %v", got, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	load := redisproc.StartLoad(ctx, m, redisproc.LoadOptions{Rate: 200})
	defer load.Stop()
	redisproc.Eventually(t, syncTimeout, "replica online, fsyncs and ACKs seen", func() (bool, string) {
		got := scrape(t, cfg.MetricsListen)
		ok := got[`replproxy_replica_state{`+name+`,state="online"}`] == 1 &&
			got["replproxy_fsync_duration_seconds_count"] > 0 && got["replproxy_upstream_last_ack_offset"] > 0 &&
			got["replproxy_downstream_bytes_sent_total"] > 0 && got[`replproxy_replica_ack_offset{`+name+`}`] > 0
		return ok, strings.Join(ownSeries(got), "\n")
	})
	got := scrape(t, cfg.MetricsListen)
	want := map[string]func(float64) bool{
		"replproxy_upstream_link_up":                                         eq(1),
		`replproxy_upstream_link_state{state="connected"}`:                   eq(1),
		`replproxy_upstream_link_state{state="sync"}`:                        eq(0),
		"replproxy_upstream_last_io_seconds":                                 between(0, 5),
		"replproxy_upstream_last_ack_offset":                                 positive,
		"replproxy_upstream_last_ack_age_seconds":                            between(0, 3),
		"replproxy_upstream_bytes_received_total":                            positive,
		"replproxy_upstream_stream_bytes_total":                              positive,
		"replproxy_downstream_bytes_sent_total":                              positive,
		`replproxy_upstream_syncs_total{kind="full"}`:                        eq(1),
		`replproxy_downstream_syncs_total{kind="full"}`:                      eq(1),
		`replproxy_upstream_sync_done_bytes{transfer="upstream_full_sync"}`:  eq(0),
		`replproxy_upstream_sync_size_bytes{transfer="upstream_full_sync"}`:  eq(0),
		`replproxy_upstream_sync_rate_bytes{transfer="snapshot_refresh"}`:    eq(0),
		`replproxy_upstream_sync_eta_seconds{transfer="upstream_full_sync"}`: eq(-1),
		"replproxy_repl_offset":                                              positive,
		"replproxy_durable_offset":                                           positive,
		"replproxy_backlog_bytes":                                            positive,
		"replproxy_backlog_first_offset":                                     positive,
		"replproxy_backlog_age_seconds":                                      between(0, 120),
		"replproxy_replicas":                                                 eq(1),
		`replproxy_replica_state{` + name + `,state="online"}`:               eq(1),
		`replproxy_replica_state{` + name + `,state="wait_bgsave"}`:          eq(0),
		`replproxy_replica_state{` + name + `,state="send_bulk"}`:            eq(0),
		`replproxy_replica_lag_bytes{` + name + `}`:                          between(0, 1<<20),
		`replproxy_replica_lag_seconds{` + name + `}`:                        between(0, 10),
		`replproxy_replica_ack_offset{` + name + `}`:                         positive,
		`replproxy_replica_sent_bytes{` + name + `}`:                         positive,
		`replproxy_replica_sync_done_bytes{` + name + `}`:                    eq(0),
		`replproxy_replica_sync_size_bytes{` + name + `}`:                    eq(0),
		`replproxy_replica_sync_rate_bytes{` + name + `}`:                    eq(0),
		`replproxy_replica_sync_eta_seconds{` + name + `}`:                   eq(-1),
		"replproxy_snapshot_offset":                                          between(0, 1<<40),
		"replproxy_snapshot_bytes":                                           positive,
		"replproxy_snapshot_age_seconds":                                     between(0, 120),
		"replproxy_snapshot_refreshes_total":                                 eq(0),
		"replproxy_snapshot_refresh_failures_total":                          eq(0),
		"replproxy_fsync_duration_seconds_count":                             positive,
		`replproxy_fsync_duration_seconds_bucket{le="+Inf"}`:                 positive,
		"replproxy_fsync_seconds_total":                                      between(0, 1000),
		"replproxy_fsync_slow_total":                                         between(0, 1000),
		"replproxy_data_dir_free_bytes":                                      positive,
		"replproxy_data_dir_size_bytes":                                      positive,
		"replproxy_ready":                                                    eq(1),
	}
	for series, ok := range want {
		v, present := got[series]
		if !present {
			t.Errorf("/metrics lacks %s", series)
		} else if !ok(v) {
			t.Errorf("%s = %v", series, v)
		}
	}
	// The INFO fields redis_exporter reads for a replica's dashboard.
	info := p.info("all")
	for _, f := range []string{"total_net_repl_input_bytes", "total_net_repl_output_bytes", "master_repl_offset", "slave_repl_offset", "master_last_io_seconds_ago"} {
		if n, err := strconv.ParseInt(info[f], 10, 64); err != nil || (n <= 0 && f != "master_last_io_seconds_ago") {
			t.Errorf("INFO %s = %q", f, info[f])
		}
	}
	if info["ready"] != "1" || !strings.Contains(info["replica0"], "addr=127.0.0.1:"+strconv.Itoa(rep.Port)+",state=online") {
		t.Errorf("INFO proxy section: ready %q, replica0 %q", info["ready"], info["replica0"])
	}
	for series := range got {
		if strings.Contains(series, "id=") {
			t.Errorf("series with a per-connection id: %s", series)
		}
	}

	// A reconnect keeps the series: same names, same labels.
	before := ownSeries(got)
	if _, err := rep.Do("CLIENT", "KILL", "TYPE", "master"); err != nil {
		t.Fatal(err)
	}
	redisproc.Eventually(t, syncTimeout, "replica back online", func() (bool, string) {
		return scrape(t, cfg.MetricsListen)["replproxy_downstream_syncs_total{kind=\"partial_ok\"}"] >= 1 &&
			rep.Info("replication")["master_link_status"] == "up", ""
	})
	for range 3 {
		after := ownSeries(scrape(t, cfg.MetricsListen))
		if strings.Join(after, "\n") != strings.Join(before, "\n") {
			t.Fatalf("series changed across a reconnect:\nbefore:\n%s\nafter:\n%s", strings.Join(before, "\n"), strings.Join(after, "\n"))
		}
		time.Sleep(300 * time.Millisecond)
	}
	if _, err := load.Stop(); err != nil {
		t.Fatal(err)
	}
	redisproc.WaitInSync(t, syncTimeout, m, rep)
}

func eq(want float64) func(float64) bool { return func(v float64) bool { return v == want } }
func between(lo, hi float64) func(float64) bool {
	return func(v float64) bool { return v >= lo && v <= hi }
}
func positive(v float64) bool { return v > 0 }

// Point 2: /readyz follows the upstream link; with a grace period the
// proxy stays ready while it serves from the backlog.
func TestReadyzFollowsTheMaster(t *testing.T) {
	m := redisproc.Start(t)
	strict := proxyConfig(t, m.Addr())
	strict.MetricsListen = "127.0.0.1:" + strconv.Itoa(redisproc.FreePort(t))
	lenient := proxyConfig(t, m.Addr())
	lenient.MetricsListen = "127.0.0.1:" + strconv.Itoa(redisproc.FreePort(t))
	lenient.Health.ReadyLinkDownGrace = proxy.Duration(time.Hour)
	startProxy(t, strict)
	startProxy(t, lenient)
	ready := func(addr string, want int) func() (bool, string) {
		return func() (bool, string) {
			code, body := httpGet(addr, "/readyz")
			return code == want, strconv.Itoa(code) + " " + body
		}
	}
	for _, addr := range []string{strict.MetricsListen, lenient.MetricsListen} {
		redisproc.Eventually(t, syncTimeout, "ready", ready(addr, http.StatusOK))
		if code, body := httpGet(addr, "/healthz"); code != http.StatusOK {
			t.Fatalf("/healthz: %d %s", code, body)
		}
	}
	m.Kill()
	redisproc.Eventually(t, 20*time.Second, "not ready with the master down", ready(strict.MetricsListen, http.StatusServiceUnavailable))
	if code, body := httpGet(strict.MetricsListen, "/readyz"); !strings.Contains(body, "upstream link") {
		t.Fatalf("/readyz gives no reason: %d %s", code, body)
	}
	if code, body := httpGet(strict.MetricsListen, "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz with the master down: %d %s", code, body)
	}
	// Each proxy sees the master go on its own socket: the lenient one may
	// notice a moment after the strict one.
	redisproc.Eventually(t, 20*time.Second, "/readyz within ready_link_down_grace to be ready on the backlog", func() (bool, string) {
		code, body := httpGet(lenient.MetricsListen, "/readyz")
		return code == http.StatusOK && strings.Contains(body, "backlog"), strconv.Itoa(code) + " " + body
	})
	// The probe subcommand, as the systemd timer runs it, agrees.
	if out, err := exec.Command(binary, "probe", "--ready", "--addr", strict.MetricsListen).CombinedOutput(); err == nil || !strings.Contains(string(out), "503") {
		t.Fatalf("probe --ready with the master down: %v %s", err, out)
	}
	runBinary(t, "probe", "--addr", strict.MetricsListen)
	m.Restart(t)
	redisproc.Eventually(t, syncTimeout, "ready again with the master back", ready(strict.MetricsListen, http.StatusOK))
}
