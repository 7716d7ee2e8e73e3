package proxy

import (
	"fmt"
	"net/http"
	"time"

	"github.com/replproxy/replproxy/fanout"
)

// HealthConfig says when /readyz reports the proxy ready for replicas.
type HealthConfig struct {
	// ReadyMaxLag: ready only while the last byte from the master is at most
	// this old, and no append has waited on the disk longer. A master PINGs
	// its replicas every repl-ping-replica-period (10 s by default), so an
	// idle but healthy link stays within 30 s.
	ReadyMaxLag Duration `yaml:"ready_max_lag"`
	// ReadyLinkDownGrace keeps the proxy ready for this long after the
	// upstream link goes down, while it serves its replicas from the
	// backlog (0: not ready as soon as the link is down).
	ReadyLinkDownGrace Duration `yaml:"ready_link_down_grace"`
}

// readiness says whether the proxy is fit to serve replicas, and why.
func (p *Proxy) readiness(now time.Time) (bool, string) {
	if why, since := p.link.DiskWait(); why != "" {
		return false, fmt.Sprintf("upstream link paused for %s: %s", now.Sub(since).Round(time.Second), why)
	}
	st := p.store.State()
	if !st.HasHistory {
		return false, "no data yet: waiting for the first full sync from the master"
	}
	link := p.link.LinkStatus()
	maxLag := time.Duration(p.cfg.Health.ReadyMaxLag)
	// Replicas are still served from what the backlog holds, but nothing
	// new reaches them while the disk does not take the append.
	if stuck := p.store.AppendStuck(now); maxLag > 0 && stuck > maxLag {
		return false, fmt.Sprintf("an append to the backlog has waited on the disk for %s (ready_max_lag %s)", stuck.Round(time.Millisecond), maxLag)
	}
	if link.State == fanout.LinkConnected {
		silent := now.Sub(link.LastIO)
		if maxLag > 0 && silent > maxLag {
			return false, fmt.Sprintf("upstream link up, but no byte from the master for %s (ready_max_lag %s)", silent.Round(time.Second), maxLag)
		}
		return true, fmt.Sprintf("upstream link up, last byte from the master %s ago", silent.Round(time.Second))
	}
	down := now.Sub(link.DownSince)
	grace := time.Duration(p.cfg.Health.ReadyLinkDownGrace)
	if grace > 0 && down < grace {
		return true, fmt.Sprintf("upstream link %s for %s; serving from the backlog within ready_link_down_grace %s", link.State, down.Round(time.Second), grace)
	}
	return false, fmt.Sprintf("upstream link %s for %s", link.State, down.Round(time.Second))
}

// HealthHeader names the proxy on every /healthz and /readyz answer, so a
// probe can tell it from another server on the port (an exporter answers
// 200 to any path too).
const HealthHeader = "X-Replproxy"

// HealthHeaderValue is HealthHeader's value.
const HealthHeaderValue = "replproxy"

func nameTheProxy(w http.ResponseWriter) {
	w.Header().Set(HealthHeader, HealthHeaderValue)
}

// serveHealthz answers while the process serves: liveness.
func serveHealthz(w http.ResponseWriter, _ *http.Request) {
	nameTheProxy(w)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ok")
}

// readyzHandler answers 200 when ready and 503 when not, with the reason.
func readyzHandler(readiness func(time.Time) (bool, string)) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) { serveReadyz(w, readiness) }
}

func serveReadyz(w http.ResponseWriter, readiness func(time.Time) (bool, string)) {
	ready, why := readiness(time.Now())
	nameTheProxy(w)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !ready {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "not ready:", why)
		return
	}
	fmt.Fprintln(w, "ready:", why)
}
