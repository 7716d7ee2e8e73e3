package proxy_test

import (
	"encoding/json"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/replproxy/replproxy/internal/redisproc"
)

type alertRule struct {
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

type ruleGroups struct {
	Groups []struct {
		Name  string      `yaml:"name"`
		Rules []alertRule `yaml:"rules"`
	} `yaml:"groups"`
}

func readRules(t *testing.T, path string, operator bool) []alertRule {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var groups ruleGroups
	if operator {
		var cr struct {
			APIVersion string     `yaml:"apiVersion"`
			Kind       string     `yaml:"kind"`
			Spec       ruleGroups `yaml:"spec"`
		}
		if err := yaml.Unmarshal(raw, &cr); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if cr.APIVersion != "monitoring.coreos.com/v1" || cr.Kind != "PrometheusRule" {
			t.Fatalf("%s: %s %s is not a PrometheusRule", path, cr.APIVersion, cr.Kind)
		}
		groups = cr.Spec
	} else if err := yaml.Unmarshal(raw, &groups); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var out []alertRule
	for _, g := range groups.Groups {
		out = append(out, g.Rules...)
	}
	return out
}

// dashboardExprs returns every query of a Grafana dashboard.
func dashboardExprs(t *testing.T, path string) []string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("%s does not parse: %v", path, err)
	}
	var exprs []string
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		if q, ok := v.Query.(string); ok && v.Type == "query" {
			exprs = append(exprs, q)
		}
	}
	return exprs
}

// Point 5: the dashboard and both rule files parse, the two rule files
// agree, the alerts the issue names are there, and every metric they use
// exists on a live proxy's /metrics.
func TestMonitoringUsesRealMetrics(t *testing.T) {
	const dir = "../deploy/monitoring/"
	plain := readRules(t, dir+"replproxy-rules.yml", false)
	operator := readRules(t, dir+"prometheusrule.yaml", true)
	if len(plain) == 0 || len(plain) != len(operator) {
		t.Fatalf("%d plain rules, %d in the PrometheusRule", len(plain), len(operator))
	}
	exprs := dashboardExprs(t, dir+"grafana-dashboard.json")
	for i, r := range plain {
		o := operator[i]
		if r.Alert != o.Alert || r.Expr != o.Expr || r.For != o.For {
			t.Errorf("rule %d differs: %+v vs %+v", i, r, o)
		}
		if r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
			t.Errorf("rule %s lacks expr, severity or summary", r.Alert)
		}
		exprs = append(exprs, r.Expr)
	}
	names := map[string]bool{}
	for _, r := range plain {
		names[r.Alert] = true
	}
	for _, want := range []string{"ReplproxyUpstreamLinkDown", "ReplproxyReplicaLagging", "ReplproxyReplicaStuckWaitingForSnapshot",
		"ReplproxySnapshotStale", "ReplproxySlowFsync", "ReplproxyDiskNearFull", "ReplproxyFullSyncStorm"} {
		if !names[want] {
			t.Errorf("no alert %s", want)
		}
	}

	m := redisproc.Start(t)
	cfg := proxyConfig(t, m.Addr())
	cfg.MetricsListen = "127.0.0.1:" + strconv.Itoa(redisproc.FreePort(t))
	p := startProxy(t, cfg)
	rep := redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(p.port))
	redisproc.Eventually(t, syncTimeout, "a replica online and an fsync done", func() (bool, string) {
		m.Do("SET", "k", time.Now().String())
		got := scrape(t, cfg.MetricsListen)
		return got["replproxy_fsync_duration_seconds_count"] > 0 && rep.Info("replication")["master_link_status"] == "up", ""
	})
	live := map[string]bool{}
	for series := range scrape(t, cfg.MetricsListen) {
		name, _, _ := strings.Cut(series, "{")
		live[name] = true
	}
	metric := regexp.MustCompile(`\breplproxy_[a-z0-9_]+`)
	for _, e := range exprs {
		used := metric.FindAllString(e, -1)
		if len(used) == 0 {
			t.Errorf("query uses no replproxy metric: %s", e)
		}
		for _, name := range used {
			if !live[name] {
				t.Errorf("%s is not on a live proxy's /metrics (in %s)", name, e)
			}
		}
	}
}
