package proxy_test

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// lintMetrics runs the checks of `promtool check metrics` (client_golang's
// promlint) over a live scrape, and returns the problems it finds.
func lintMetrics(t *testing.T, addr string) []string {
	t.Helper()
	res, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer res.Body.Close()
	problems, err := promlint.New(res.Body).Lint()
	if err != nil {
		t.Fatalf("lint: %v", err)
	}
	var out []string
	for _, p := range problems {
		out = append(out, p.Metric+": "+p.Text)
	}
	return out
}

// Issue 22, point 9: every series a live proxy exposes follows the
// Prometheus naming conventions, as promtool checks them: no gauge ends in
// _total, every counter does. It is linted twice: with a replica waiting
// for a snapshot (the wait series), and with it online behind a master.
func TestMetricsPassPromlint(t *testing.T) {
	m := redisproc.Start(t)
	cfg := proxyConfig(t, "127.0.0.1:"+strconv.Itoa(redisproc.FreePort(t)))
	cfg.MetricsListen = "127.0.0.1:" + strconv.Itoa(redisproc.FreePort(t))
	p := startProxy(t, cfg)
	rep := redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(p.port))
	name := `replica="127.0.0.1:` + strconv.Itoa(rep.Port) + `"`
	redisproc.Eventually(t, 20*time.Second, "replica waiting for a snapshot", func() (bool, string) {
		got := scrape(t, cfg.MetricsListen)
		return got[`replproxy_replica_snapshot_wait_seconds{reason="no_history",`+name+`}`] > 0, strings.Join(ownSeries(got), "\n")
	})
	if problems := lintMetrics(t, cfg.MetricsListen); len(problems) > 0 {
		t.Errorf("promlint, replica waiting:\n%s", strings.Join(problems, "\n"))
	}

	w, err := dialWire(cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if got, err := w.do("REPLICAOF", "127.0.0.1", strconv.Itoa(m.Port)); err != nil || got != "+OK" {
		t.Fatalf("REPLICAOF: %q %v", got, err)
	}
	redisproc.Eventually(t, syncTimeout, "replica online", func() (bool, string) {
		got := scrape(t, cfg.MetricsListen)
		return got[`replproxy_replica_state{`+name+`,state="online"}`] == 1, strings.Join(ownSeries(got), "\n")
	})
	if problems := lintMetrics(t, cfg.MetricsListen); len(problems) > 0 {
		t.Errorf("promlint, replica online:\n%s", strings.Join(problems, "\n"))
	}
}
