package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// collector reads the live state at scrape time, so the hot path keeps no
// metric bookkeeping of its own.
type collector struct{ p *Proxy }

var (
	descOffset    = prometheus.NewDesc("replproxy_repl_offset", "master_repl_offset of the stored stream.", nil, nil)
	descDurable   = prometheus.NewDesc("replproxy_durable_offset", "Last offset durable under the fsync policy (what is acknowledged upstream).", nil, nil)
	descBacklog   = prometheus.NewDesc("replproxy_backlog_bytes", "Bytes of stream held in the backlog.", nil, nil)
	descLinkUp    = prometheus.NewDesc("replproxy_upstream_link_up", "1 when the upstream link streams.", nil, nil)
	descSyncs     = prometheus.NewDesc("replproxy_downstream_syncs_total", "Downstream syncs by kind.", []string{"kind"}, nil)
	descUpSyncs   = prometheus.NewDesc("replproxy_upstream_syncs_total", "Upstream syncs by kind.", []string{"kind"}, nil)
	descReplicas  = prometheus.NewDesc("replproxy_replicas", "Attached downstream replicas.", nil, nil)
	descLagBytes  = prometheus.NewDesc("replproxy_replica_lag_bytes", "Bytes a replica has yet to be sent.", []string{"replica", "id"}, nil)
	descAckOffset = prometheus.NewDesc("replproxy_replica_ack_offset", "Last offset a replica acknowledged.", []string{"replica", "id"}, nil)
	descWaiting   = prometheus.NewDesc("replproxy_replica_snapshot_wait_seconds", "How long a replica has waited for a usable snapshot, and why.", []string{"replica", "id", "reason"}, nil)
	descFsyncs    = prometheus.NewDesc("replproxy_fsync_seconds_total", "Time spent in fsync.", nil, nil)
)

func (c collector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

func (c collector) Collect(ch chan<- prometheus.Metric) {
	st := c.p.store.State()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(descOffset, float64(st.MasterReplOffset()))
	gauge(descDurable, float64(st.Durable-1))
	gauge(descBacklog, float64(st.End-st.First))
	up := 0.0
	if c.p.link.LinkStatus().State == LinkConnected {
		up = 1
	}
	gauge(descLinkUp, up)
	stats := c.p.fan.Stats()
	counter(descSyncs, float64(stats.SyncFull.Load()), "full")
	counter(descSyncs, float64(stats.SyncPartialOK.Load()), "partial_ok")
	counter(descSyncs, float64(stats.SyncPartialErr.Load()), "partial_err")
	counter(descUpSyncs, float64(c.p.link.fullSyncs.Load()), "full")
	counter(descUpSyncs, float64(c.p.link.partialSyncs.Load()), "partial")
	reps := c.p.fan.Replicas()
	gauge(descReplicas, float64(len(reps)))
	for _, r := range reps {
		// The connection id keeps the label set unique while a replica
		// reconnects and its old session is still being torn down.
		name, id := net.JoinHostPort(r.IP, fmt.Sprint(r.Port)), fmt.Sprint(r.ID)
		gauge(descLagBytes, float64(max(st.End-r.SentOff, 0)), name, id)
		gauge(descAckOffset, float64(r.AckOffset), name, id)
		if r.WaitReason != "" {
			gauge(descWaiting, time.Since(r.WaitSince).Seconds(), name, id, r.WaitReason)
		}
	}
	counter(descFsyncs, c.p.store.SyncStats().Total.Seconds())
}

func (p *Proxy) serveMetrics(ctx context.Context) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{p}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Addr: p.cfg.MetricsListen, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ln, err := net.Listen("tcp", p.cfg.MetricsListen)
	if err != nil {
		return fmt.Errorf("metrics listen on %s: %w", p.cfg.MetricsListen, err)
	}
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics server: %w", err)
	}
	return nil
}
