package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/fanout"
)

// collector reads the live state at scrape time, so the hot path keeps no
// metric bookkeeping of its own. Replica series carry replica="ip:port"
// only: a reconnecting replica keeps its series.
type collector struct{ p *Proxy }

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("replproxy_"+name, help, labels, nil)
}

var (
	descOffset        = desc("repl_offset", "master_repl_offset of the stored stream.")
	descDurable       = desc("durable_offset", "Last offset durable under the fsync policy (what is acknowledged upstream).")
	descBacklog       = desc("backlog_bytes", "Bytes of stream held in the backlog.")
	descBacklogFirst  = desc("backlog_first_offset", "First offset held in the backlog.")
	descBacklogAge    = desc("backlog_age_seconds", "Age of the oldest byte held in the backlog.")
	descLinkUp        = desc("upstream_link_up", "1 when the upstream link streams.")
	descLinkState     = desc("upstream_link_state", "1 for the upstream link's current state.", "state")
	descLastIO        = desc("upstream_last_io_seconds", "Seconds since the last byte from the master.")
	descLastAck       = desc("upstream_last_ack_offset", "Offset in the last REPLCONF ACK sent upstream.")
	descLastAckAge    = desc("upstream_last_ack_age_seconds", "Seconds since the last REPLCONF ACK sent upstream (-1: none yet).")
	descBytesIn       = desc("upstream_bytes_received_total", "Bytes read from the master's socket.")
	descStreamIn      = desc("upstream_stream_bytes_total", "RDB and stream bytes received from the master (more than the wire when compressed).")
	descBytesOut      = desc("downstream_bytes_sent_total", "RDB and stream bytes sent to replicas.")
	descSyncs         = desc("downstream_syncs_total", "Downstream syncs by kind.", "kind")
	descUpSyncs       = desc("upstream_syncs_total", "Upstream syncs by kind.", "kind")
	descReplicas      = desc("replicas", "Attached downstream replicas.")
	descRepState      = desc("replica_state", "1 for each replica's current state.", "replica", "state")
	descLagBytes      = desc("replica_lag_bytes", "Bytes a replica has yet to be sent.", "replica")
	descLagSeconds    = desc("replica_lag_seconds", "Age of the oldest byte a replica has not acknowledged.", "replica")
	descAckOffset     = desc("replica_ack_offset", "Last offset a replica acknowledged.", "replica")
	descRepSent       = desc("replica_sent_bytes", "Bytes sent to a replica in its current session.", "replica")
	descRepUnknown    = desc("replica_unknown_commands_total", "Commands relayed to a replica that its server does not know (its rdb_format is older than the master), in its current session.", "replica")
	descSnapOffset    = desc("snapshot_offset", "Replication offset of the stored snapshot.")
	descSnapBytes     = desc("snapshot_bytes", "Size of the stored snapshot.")
	descSnapAge       = desc("snapshot_age_seconds", "Seconds since the stored snapshot was written.")
	descRefreshes     = desc("snapshot_refreshes_total", "Snapshot refreshes that succeeded.")
	descWaiting       = desc("replica_snapshot_wait_seconds", "How long a replica has waited for a usable snapshot, and why.", "replica", "reason")
	descRefreshFails  = desc("snapshot_refresh_failures_total", "Snapshot refreshes that failed.")
	descFsyncs        = desc("fsync_seconds_total", "Time spent in fsync.")
	descFsyncSlow     = desc("fsync_slow_total", "Fsyncs slower than 2 s.")
	descDiskFree      = desc("data_dir_free_bytes", "Free bytes on the data dir's filesystem (for unprivileged users).")
	descDiskSize      = desc("data_dir_size_bytes", "Size of the data dir's filesystem.")
	descReady         = desc("ready", "1 when /readyz answers ready.")
	descDamaged       = desc("damaged_bytes", "Bytes on disk under the data dir's damaged/ (files found damaged, and what was moved with them).")
	descDamagedMax    = desc("damaged_max_bytes", "damaged.max_bytes: past it, only files found damaged are kept in damaged/.")
	descSpaceWait     = desc("upstream_waiting_for_space", "1 while the upstream link stays down because the data dir lacks room for what the master may send.")
	upstreamTransfers = []string{workUpstreamSync, workSnapshotRefresh}
	// A transfer's done, size, rate and ETA (emitter.work).
	descUpWork = [4]*prometheus.Desc{
		desc("upstream_sync_done_bytes", "Bytes of the RDB received so far, by transfer (0 when none runs).", "transfer"),
		desc("upstream_sync_size_bytes", "Size of the RDB being received (-1: unknown, as with a diskless master; 0 when none runs).", "transfer"),
		desc("upstream_sync_rate_bytes", "Bytes per second of the RDB being received.", "transfer"),
		desc("upstream_sync_eta_seconds", "Seconds until the RDB is received (-1: unknown).", "transfer"),
	}
	descRepWork = [4]*prometheus.Desc{
		desc("replica_sync_done_bytes", "Bytes done of a replica's full sync or catch-up (0 when none runs).", "replica"),
		desc("replica_sync_size_bytes", "Bytes to do in a replica's full sync or catch-up (-1: unknown).", "replica"),
		desc("replica_sync_rate_bytes", "Bytes per second of a replica's full sync or catch-up.", "replica"),
		desc("replica_sync_eta_seconds", "Seconds until a replica's full sync or catch-up ends (-1: unknown).", "replica"),
	}
)

// fsyncBuckets span a page-cache hit to a disk that stalls.
var fsyncBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

func newFsyncHistogram() prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "replproxy_fsync_duration_seconds", Help: "Latency of each backlog fsync.", Buckets: fsyncBuckets,
	})
}

func (c collector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

type emitter chan<- prometheus.Metric

func (e emitter) gauge(d *prometheus.Desc, v float64, labels ...string) {
	e <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func (e emitter) counter(d *prometheus.Desc, v float64, labels ...string) {
	e <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
}

func (e emitter) work(d [4]*prometheus.Desc, w Work, label string) {
	for i, v := range [4]float64{float64(w.Done), float64(w.Total), w.Rate, w.ETA} {
		e.gauge(d[i], v, label)
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	e := emitter(ch)
	now := time.Now()
	st, lg := c.p.store.View()
	c.collectBacklog(e, st, lg, now)
	c.collectUpstream(e, now)
	c.collectReplicas(e, st, lg, now)
	c.collectSnapshot(e, st, now)
	sync := c.p.store.SyncStats()
	e.counter(descFsyncs, sync.Total.Seconds())
	e.counter(descFsyncSlow, float64(sync.Slow))
	if w := c.p.cluster; w != nil {
		w.collect(e.gauge, e.counter)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(c.p.cfg.DataDir, &fs); err == nil {
		e.gauge(descDiskFree, float64(fs.Bavail)*float64(fs.Bsize))
		e.gauge(descDiskSize, float64(fs.Blocks)*float64(fs.Bsize))
	}
	ready, _ := c.p.readiness(now)
	e.gauge(descReady, boolFloat(ready))
	e.gauge(descDamaged, float64(c.p.store.DamagedBytes()))
	e.gauge(descDamagedMax, float64(damagedMaxBytes(c.p.cfg)))
	waiting, _ := c.p.link.DiskWait()
	e.gauge(descSpaceWait, boolFloat(waiting != ""))
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c collector) collectBacklog(e emitter, st backlog.State, lg *backlog.Log, now time.Time) {
	e.gauge(descOffset, float64(st.MasterReplOffset()))
	e.gauge(descDurable, float64(st.Durable-1))
	e.gauge(descBacklog, float64(st.End-st.First))
	e.gauge(descBacklogFirst, float64(st.First))
	age := 0.0
	if lg != nil && st.End > st.First {
		if t, ok := lg.TimeAt(st.First); ok {
			age = now.Sub(t).Seconds()
		}
	}
	e.gauge(descBacklogAge, age)
}

func (c collector) collectUpstream(e emitter, now time.Time) {
	link := c.p.link.LinkStatus()
	e.gauge(descLinkUp, boolFloat(link.State == fanout.LinkConnected))
	for s := range fanout.LinkStates {
		e.gauge(descLinkState, boolFloat(link.State == s), s.String())
	}
	lastIO := -1.0
	if !link.LastIO.IsZero() {
		lastIO = now.Sub(link.LastIO).Seconds()
	}
	e.gauge(descLastIO, lastIO)
	ackAge := -1.0
	if at := c.p.link.LastAck.At.Load(); at > 0 {
		ackAge = now.Sub(time.Unix(0, at)).Seconds()
	}
	e.gauge(descLastAck, float64(c.p.link.LastAck.Off.Load()))
	e.gauge(descLastAckAge, ackAge)
	e.counter(descBytesIn, float64(c.p.link.WireBytes.Load()))
	e.counter(descStreamIn, float64(c.p.link.RawBytes.Load()))
	e.counter(descUpSyncs, float64(c.p.link.FullSyncs.Load()), "full")
	e.counter(descUpSyncs, float64(c.p.link.PartialSyncs.Load()), "partial")
	master := c.p.link.Addr()
	for _, kind := range upstreamTransfers {
		w, ok := c.p.progress.find(kind, master)
		if !ok {
			w.ETA = -1
		}
		e.work(descUpWork, w, kind)
	}
}

func (c collector) collectReplicas(e emitter, st backlog.State, lg *backlog.Log, now time.Time) {
	stats := c.p.fan.Stats()
	e.counter(descSyncs, float64(stats.SyncFull.Load()), "full")
	e.counter(descSyncs, float64(stats.SyncPartialOK.Load()), "partial_ok")
	e.counter(descSyncs, float64(stats.SyncPartialErr.Load()), "partial_err")
	e.counter(descBytesOut, float64(c.p.fan.BytesSent()))
	reps := latestReplicas(c.p.fan.Replicas())
	e.gauge(descReplicas, float64(len(reps)))
	for _, r := range reps {
		name := replicaName(r)
		for s := range fanout.ReplicaStates {
			e.gauge(descRepState, boolFloat(r.State == s), name, s.String())
		}
		e.gauge(descLagBytes, float64(max(st.End-r.SentOff, 0)), name)
		e.gauge(descLagSeconds, replicaLag(r, st, lg, now).Seconds(), name)
		e.gauge(descAckOffset, float64(r.AckOffset), name)
		e.gauge(descRepSent, float64(r.SentBytes), name)
		e.work(descRepWork, replicaWork(c.p.progress, name), name)
		e.counter(descRepUnknown, float64(r.UnknownCommands), name)
		if r.WaitReason != "" {
			e.gauge(descWaiting, now.Sub(r.WaitSince).Seconds(), name, r.WaitReason)
		}
	}
}

// replicaWork is the replica's running full sync or catch-up, or a zero
// Work with an unknown ETA.
func replicaWork(pg *progress, name string) Work {
	for _, kind := range []string{workReplicaSync, workReplicaCatchup} {
		if w, ok := pg.find(kind, name); ok {
			return w
		}
	}
	return Work{ETA: -1}
}

// replicaLag is the age of the oldest byte the replica has not yet
// acknowledged: zero when it has everything, the age of its snapshot's
// position while it full-syncs, and its wait while it waits for one.
func replicaLag(r fanout.ReplicaInfo, st backlog.State, lg *backlog.Log, now time.Time) time.Duration {
	pos := r.SentOff
	if r.State == fanout.StateOnline && r.AckOffset > 0 {
		pos = r.AckOffset + 1
	}
	if r.State == fanout.StateOnline && pos >= st.End {
		return 0
	}
	if lg != nil && pos > 0 {
		if t, ok := lg.TimeAt(pos); ok {
			return max(0, now.Sub(t))
		}
	}
	return now.Sub(r.Since)
}

func (c collector) collectSnapshot(e emitter, st backlog.State, now time.Time) {
	e.counter(descRefreshes, float64(c.p.snap.Refreshes.Load()))
	e.counter(descRefreshFails, float64(c.p.snap.Failures.Load()))
	if st.Snapshot == nil {
		return
	}
	e.gauge(descSnapOffset, float64(st.Snapshot.Offset))
	e.gauge(descSnapBytes, float64(st.Snapshot.Size))
	if t, ok := c.p.snapshotTime(st); ok {
		e.gauge(descSnapAge, now.Sub(t).Seconds())
	}
}

// snapshotTime is when the stored snapshot was written.
func (p *Proxy) snapshotTime(st backlog.State) (time.Time, bool) {
	if st.Snapshot == nil {
		return time.Time{}, false
	}
	info, err := os.Stat(backlog.Layout(p.cfg.DataDir).Snapshot(st.Snapshot.File))
	if err != nil {
		return time.Time{}, false
	}
	return info.ModTime(), true
}

func (p *Proxy) serveMetrics(ctx context.Context) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{p}, p.fsyncHist, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return serveRegistry(ctx, p.cfg.MetricsListen, metricsGuardOf(p.cfg), reg, p.readiness)
}

// serveRegistry serves /metrics from reg, and /healthz and /readyz, the
// latter as ready says.
func serveRegistry(ctx context.Context, addr string, guard metricsGuard, reg *prometheus.Registry, ready func(time.Time) (bool, string)) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", guard.protect(promhttp.HandlerFor(reg, promhttp.HandlerOpts{})))
	mux.HandleFunc("/healthz", serveHealthz)
	mux.HandleFunc("/readyz", readyzHandler(ready))
	srv := guard.server(mux)
	ln, err := guard.listen(addr)
	if err != nil {
		return fmt.Errorf("metrics listen on %s: %w", addr, err)
	}
	srv.ConnState = ln.connState
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics server: %w", err)
	}
	return nil
}
