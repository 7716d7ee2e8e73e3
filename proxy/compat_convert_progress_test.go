//go:build compat

package proxy_test

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/proxy"
)

// Issue 26: a conversion reports its progress as other long work does:
// INFO stats (bytes done and total, keys), a work line in INFO proxy, and
// log lines at start, every progress_interval and at the end. A rate
// (replicas.rdb_convert_rate) makes a small snapshot's conversion last
// long enough to be watched.
func TestCompatConvertProgressReported(t *testing.T) {
	t.Parallel()
	m := redisproc.StartBinary(t, redisproc.Built(t, "redis-7.4.1"), append(append([]string{}, masterArgs...),
		"--rdbcompression", "no")...)
	if _, err := m.Do("DEBUG", "POPULATE", "60000", "key", "100"); err != nil {
		t.Fatal(err)
	}
	cfg := proxyConfig(t, m.Addr())
	cfg.Replicas.RDBFormat = "redis-7.2"
	cfg.Replicas.RDBConvertRate = 1 << 20 // about 8 s for the ~8 MB snapshot
	cfg.Log.ProgressInterval = proxy.Duration(time.Second)
	tp := startProxy(t, cfg)
	redisproc.Eventually(t, syncTimeout, "the proxy's snapshot", func() (bool, string) {
		return tp.infoInt("backlog", "snapshot_bytes") > 0, ""
	})
	total := tp.infoInt("backlog", "snapshot_bytes")
	old := redisproc.StartBinary(t, redisproc.Built(t, "redis-7.2.6"), "--replicaof", "127.0.0.1", strconv.Itoa(tp.port))

	var done, keys []int64
	workLines := 0
	redisproc.Eventually(t, syncTimeout, "the conversion to end", func() (bool, string) {
		info := tp.info("all")
		if info["rdb_conversions_in_progress"] == "1" {
			done = append(done, atoi(info["rdb_conversion_bytes_done"]))
			keys = append(keys, atoi(info["rdb_conversion_keys"]))
			if got := atoi(info["rdb_conversion_bytes_total"]); got != total {
				t.Errorf("rdb_conversion_bytes_total %d, the snapshot has %d", got, total)
			}
			// The work line comes with the next progress sample, once a second.
			if w, ok := workLine(info, "rdb_conversion"); ok {
				if w["peer"] != "redis-7.2" || atoi(w["total"]) != total || w["keys"] == "" {
					t.Errorf("INFO proxy work line for the conversion: %v", w)
				}
				workLines++
			}
		}
		return tp.infoInt("stats", "rdb_conversions") == 1, info["rdb_conversion_bytes_done"]
	})
	if workLines == 0 {
		t.Fatal("INFO proxy never showed the conversion's work line")
	}
	if !rising(done) || !rising(keys) {
		t.Fatalf("progress did not rise while the conversion ran: bytes %v, keys %v", done, keys)
	}
	if last := keys[len(keys)-1]; last <= 0 || last > 60000 {
		t.Fatalf("keys %d while converting 60000", last)
	}
	if tp.infoInt("stats", "rdb_conversions_in_progress") != 0 || tp.infoInt("stats", "rdb_conversion_bytes_done") != 0 {
		t.Fatal("a finished conversion still shows in INFO stats")
	}

	// The log: started, several progress lines with keys, ended.
	redisproc.Eventually(t, 10*time.Second, "the log's end of the conversion", func() (bool, string) {
		for _, line := range strings.Split(tail(tp.logPath, 2000), "\n") {
			if strings.Contains(line, `"work":"rdb_conversion"`) && strings.Contains(line, "long work ended") {
				return true, ""
			}
		}
		return false, ""
	})
	var started, progress, ended int
	for _, line := range strings.Split(tail(tp.logPath, 2000), "\n") {
		var ev map[string]any
		if json.Unmarshal([]byte(line), &ev) != nil || ev["work"] != "rdb_conversion" {
			continue
		}
		if ev["peer"] != "redis-7.2" || ev["bytes_total"] != float64(total) {
			t.Fatalf("conversion log line without its target or size: %s", line)
		}
		if _, ok := ev["keys"]; !ok {
			t.Fatalf("conversion log line without keys: %s", line)
		}
		switch ev["message"] {
		case "long work started":
			started++
		case "progress":
			progress++
		case "long work ended":
			ended++
		}
	}
	if started != 1 || ended != 1 || progress < 2 {
		t.Fatalf("conversion log lines: %d started, %d progress, %d ended", started, progress, ended)
	}
	waitCaughtUp(t, m, old)
	redisproc.WaitInSync(t, syncTimeout, m, old)
}
