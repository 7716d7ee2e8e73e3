package proxy_test

import (
	"encoding/json"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/proxy"
)

// workLine finds the INFO proxy section's line for a kind of work and
// returns its fields.
func workLine(info map[string]string, kind string) (map[string]string, bool) {
	for k, v := range info {
		if !strings.HasPrefix(k, "work") || !strings.Contains(v, "kind="+kind+",") {
			continue
		}
		out := map[string]string{}
		for _, kv := range strings.Split(v, ",") {
			if a, b, ok := strings.Cut(kv, "="); ok {
				out[a] = b
			}
		}
		return out, true
	}
	return nil, false
}

func atoi(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

// rising says the samples grow at least twice and end above the first.
func rising(xs []int64) bool {
	ups := 0
	for i := 1; i < len(xs); i++ {
		if xs[i] < xs[i-1] {
			return false
		}
		if xs[i] > xs[i-1] {
			ups++
		}
	}
	return ups >= 2
}

// Point 3: a 200 MB full sync, upstream (paced by a narrow link) and
// downstream (paced by rate_limit), shows rising progress in INFO and in
// the log.
func TestProgressOf200MBFullSync(t *testing.T) {
	// A disk-based sync announces its size; no compression keeps it 200 MB.
	m := redisproc.Start(t, "--repl-diskless-sync", "no", "--rdbcompression", "no")
	if _, err := m.Do("DEBUG", "POPULATE", "200000", "key", "1000"); err != nil {
		t.Fatal(err)
	}
	_, up := toxicLink(t, m.Addr(), `{"type":"bandwidth","stream":"downstream","attributes":{"rate":40000}}`)
	cfg := proxyConfig(t, up)
	cfg.Log.ProgressInterval = proxy.Duration(time.Second)
	cfg.Replicas.RateLimit = 20 << 20 // about 10 s: several progress lines even on a loaded machine
	cfg.MetricsListen = "127.0.0.1:" + strconv.Itoa(redisproc.FreePort(t))
	p := startProxy(t, cfg)

	var read, done []int64
	var total int64
	var upMetrics map[string]float64
	redisproc.Eventually(t, syncTimeout, "upstream full sync", func() (bool, string) {
		info := p.info("all")
		if info["master_sync_in_progress"] == "1" {
			read = append(read, atoi(info["master_sync_read_bytes"]))
			total = max(total, atoi(info["master_sync_total_bytes"]))
			if w, ok := workLine(info, "upstream_full_sync"); ok {
				done = append(done, atoi(w["done"]))
				if atoi(w["done"]) > 0 && upMetrics == nil {
					upMetrics = scrape(t, cfg.MetricsListen)
				}
			}
		}
		return info["master_link_status"] == "up", info["master_sync_read_bytes"]
	})
	if total < 200e6 || !rising(read) || !rising(done) {
		t.Fatalf("upstream sync: total %d, master_sync_read_bytes %v, work done %v: want 200 MB and rising", total, read, done)
	}

	rep := redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(p.port))
	var sent []int64
	var sentTotal int64
	var status string
	var downMetrics map[string]float64
	redisproc.Eventually(t, syncTimeout, "downstream full sync", func() (bool, string) {
		if w, ok := workLine(p.info("proxy"), "replica_full_sync"); ok {
			sent = append(sent, atoi(w["done"]))
			sentTotal = atoi(w["total"])
			if status == "" {
				status = runBinary(t, "status", "--addr", cfg.Listen)
				downMetrics = scrape(t, cfg.MetricsListen)
			}
		}
		return rep.Info("replication")["master_link_status"] == "up", ""
	})
	if sentTotal < 200e6 || !rising(sent) {
		t.Fatalf("downstream sync: total %d, done %v: want 200 MB and rising", sentTotal, sent)
	}
	const upSync = `{transfer="upstream_full_sync"}`
	if upMetrics["replproxy_upstream_sync_done_bytes"+upSync] <= 0 || upMetrics["replproxy_upstream_sync_size_bytes"+upSync] < 200e6 {
		t.Errorf("upstream sync metrics: done %v, total %v", upMetrics["replproxy_upstream_sync_done_bytes"+upSync], upMetrics["replproxy_upstream_sync_size_bytes"+upSync])
	}
	name := `{replica="127.0.0.1:` + strconv.Itoa(rep.Port) + `"}`
	if downMetrics[`replproxy_replica_state{replica="127.0.0.1:`+strconv.Itoa(rep.Port)+`",state="send_bulk"}`] != 1 ||
		downMetrics["replproxy_replica_sync_size_bytes"+name] < 200e6 {
		t.Errorf("replica sync metrics: state send_bulk %v, total %v", downMetrics[`replproxy_replica_state{replica="127.0.0.1:`+strconv.Itoa(rep.Port)+`",state="send_bulk"}`], downMetrics["replproxy_replica_sync_size_bytes"+name])
	}
	if !regexp.MustCompile(`127\.0\.0\.1:` + strconv.Itoa(rep.Port) + ` +send_bulk .* full sync: .* of 19\d\.\d MiB \(`).MatchString(status) {
		t.Errorf("status does not show the replica's full sync progress:\n%s", status)
	}
	checkProgressLog(t, p.logPath, "upstream_full_sync")
	checkProgressLog(t, p.logPath, "replica_full_sync")
}

// checkProgressLog wants at least two progress lines for a kind of work,
// with bytes done rising, a total, a rate and an ETA.
func checkProgressLog(t *testing.T, path, kind string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var done []int64
	for _, line := range strings.Split(string(raw), "\n") {
		var ev struct {
			Msg   string  `json:"message"`
			Work  string  `json:"work"`
			Done  int64   `json:"bytes_done"`
			Total int64   `json:"bytes_total"`
			Rate  int64   `json:"rate_bytes_per_sec"`
			ETA   float64 `json:"eta_seconds"`
			Pct   float64 `json:"percent"`
		}
		// Before the first byte (a master still saving its RDB) there is
		// nothing to rate yet.
		if json.Unmarshal([]byte(line), &ev) != nil || ev.Msg != "progress" || ev.Work != kind || ev.Done == 0 {
			continue
		}
		if ev.Total < 200e6 || ev.Rate <= 0 || ev.ETA < 0 || ev.Pct <= 0 {
			t.Errorf("%s progress line lacks total, rate, ETA or percent: %s", kind, line)
		}
		done = append(done, ev.Done)
	}
	if len(done) < 2 || !rising(append([]int64{0}, done...)) {
		t.Fatalf("%s: log progress %v: want two lines or more, rising", kind, done)
	}
}

// A replica that comes back far behind catches up from the backlog, and
// the catch-up shows its progress in INFO and in the log.
func TestProgressOfACatchUp(t *testing.T) {
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.Log.ProgressInterval = proxy.Duration(time.Second)
	cfg.Replicas.RateLimit = 8 << 20
	p := startProxy(t, cfg)
	rep := redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(p.port))
	redisproc.WaitInSync(t, syncTimeout, m, rep)
	if err := rep.Shutdown(true); err != nil { // saved with its offset: it will continue partially
		t.Fatal(err)
	}
	value := strings.Repeat("v", 1<<20)
	for i := range 48 {
		if _, err := m.Do("SET", "big"+strconv.Itoa(i), value); err != nil {
			t.Fatal(err)
		}
	}
	rep.Restart(t)
	var done []int64
	redisproc.Eventually(t, syncTimeout, "replica caught up", func() (bool, string) {
		if w, ok := workLine(p.info("proxy"), "replica_catchup"); ok {
			done = append(done, atoi(w["done"]))
		}
		return rep.InfoInt("replication", "slave_repl_offset") >= m.InfoInt("replication", "master_repl_offset"), ""
	})
	if !rising(done) {
		t.Fatalf("catch-up progress in INFO: %v", done)
	}
	if n := p.infoInt("stats", "sync_partial_ok"); n != 1 {
		t.Fatalf("sync_partial_ok %d: the replica did not continue partially", n)
	}
	checkCatchupLog(t, p.logPath)
}

func checkCatchupLog(t *testing.T, path string) {
	t.Helper()
	raw, _ := os.ReadFile(path)
	lines := 0
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.Contains(line, `"work":"replica_catchup"`) && strings.Contains(line, `"message":"progress"`) &&
			strings.Contains(line, `"eta_seconds"`) && strings.Contains(line, `"rate_bytes_per_sec"`) {
			lines++
		}
	}
	if lines < 2 {
		t.Fatalf("%d catch-up progress lines in the log, want 2 or more", lines)
	}
}
