// Package proxy wires replproxy together: the upstream link (package
// upstream) that acts as one replica of the master, the disk backlog it
// feeds, and the downstream server that acts as a master for any number of
// replicas.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/fanout"
	"github.com/replproxy/replproxy/upstream"
)

// Proxy is one running replproxy.
type Proxy struct {
	cfg     Config
	log     zerolog.Logger
	store   *backlog.Store
	fan     *fanout.Server
	link    *upstream.Link
	snap    *upstream.Refresher
	watch   *sentinelWatch // nil without Sentinel
	cluster *clusterWatch  // nil without master.cluster
	ln      net.Listener

	progress  *progress
	fsyncHist prometheus.Histogram
	tls       *serverTLS // nil without tls.listen
}

// New opens the data dir and binds the listener, so that errors an operator
// must fix surface before anything runs.
func New(r Resolved, log zerolog.Logger, version string) (*Proxy, error) {
	if !r.resolved {
		return nil, errUnresolved
	}
	cfg := r.Config
	fsyncHist := newFsyncHistogram()
	store, err := openStore(cfg, log, fsyncHist.Observe)
	if err != nil {
		return nil, err
	}
	p := &Proxy{cfg: cfg, log: log, store: store, fsyncHist: fsyncHist}
	if p.ln, p.tls, err = listen(cfg); err != nil {
		store.Close()
		return nil, err
	}
	if cfg.Master.Cluster.enabled() {
		log = log.With().Str("shard", cfg.Master.Cluster.Shard).Logger()
	}
	p.fan = fanout.New(fanoutConfig(r, store, p.Port(), version, log))
	p.link = upstream.NewLink(linkConfig(cfg, p.Port()), store, p.fan, log.With().Str("component", "upstream").Logger())
	p.snap = upstream.NewRefresher(p.link, refreshConfig(cfg))
	p.fan.SetUpstream(p.link, p.stats, p.snap.Need)
	p.progress = newProgress(p, time.Duration(cfg.Log.ProgressInterval))
	p.fan.SetProxyInfo(p.proxyInfo)
	if cfg.Master.Sentinel.enabled() {
		p.watch = &sentinelWatch{cfg: cfg.Master.Sentinel, link: p.link, log: log.With().Str("component", "sentinel").Logger()}
	}
	if cfg.Master.Cluster.enabled() {
		ccfg := cfg.Master.Cluster
		if ccfg.Password == "" { // the cluster's nodes usually share one set of credentials
			ccfg.User, ccfg.Password = cfg.Master.User, cfg.Master.Password
		}
		p.cluster = &clusterWatch{cfg: ccfg, link: p.link, log: log.With().Str("component", "cluster").Logger()}
		if cfg.TLS.Upstream {
			p.cluster.tls = &p.cfg.TLS
		}
		p.fan.SetShardInfo(p.cluster.info)
		p.fan.SetSlotMap(func() []fanout.SlotShard { return slotMap([]*Proxy{p}) })
	}
	return p, nil
}

func openStore(cfg Config, log zerolog.Logger, onFsync func(float64)) (*backlog.Store, error) {
	return backlog.Open(cfg.DataDir, storeOptions(cfg, log, onFsync))
}

func storeOptions(cfg Config, log zerolog.Logger, onFsync func(float64)) backlog.Options {
	return backlog.Options{
		Log: backlog.LogOptions{
			SegmentBytes: int64(cfg.Backlog.SegmentBytes),
			MaxBytes:     int64(cfg.Backlog.MaxBytes),
			MaxAge:       time.Duration(cfg.Backlog.MaxAge),
			Fsync:        cfg.Backlog.Fsync,
			Sync:         cfg.Backlog.syncHook,
			OnFsync:      func(d time.Duration) { onFsync(d.Seconds()) },
			HoldMaxBytes: holdMaxBytes(cfg),
		},
		ScrubRate:       int64(cfg.Backlog.ScrubRate),
		SnapshotKeep:    cfg.Snapshot.Keep,
		DamagedMaxBytes: damagedMaxBytes(cfg),
		Logger:          log.With().Str("component", "backlog").Logger(),
	}
}

func holdMaxBytes(cfg Config) int64 {
	if cfg.Snapshot.HoldMaxBytes > 0 {
		return int64(cfg.Snapshot.HoldMaxBytes)
	}
	return int64(cfg.Backlog.MaxBytes)
}

func fanoutConfig(r Resolved, store *backlog.Store, port int, version string, log zerolog.Logger) fanout.Config {
	cfg := r.Config
	return fanout.Config{
		Store:            store,
		Users:            r.users,
		ProtectedMode:    cfg.ProtectedMode,
		MaxClients:       cfg.MaxClients,
		AuthTimeout:      time.Duration(cfg.AuthTimeout),
		MultiMaxCommands: cfg.MultiMaxCommands,
		MultiMaxBytes:    int(cfg.MultiMaxBytes),
		UnauthMaxMemory:  int64(cfg.MaxMemoryUnauthClients),
		Logger:           log.With().Str("component", "fanout").Logger(),
		Version:          version,
		RunID:            backlog.RandomReplID(),
		Port:             port,
		ReplTimeout:      time.Duration(cfg.Replicas.Timeout),
		BacklogMaxBytes:  int64(cfg.Backlog.MaxBytes),
		Fsync:            string(cfg.Backlog.Fsync),

		MaxLagBytes:            int64(cfg.Replicas.MaxLagBytes),
		MaxLag:                 time.Duration(cfg.Replicas.MaxLagSeconds),
		MaxConcurrentFullSyncs: cfg.Replicas.MaxConcurrentFullSyncs,
		RateLimit:              int64(cfg.Replicas.RateLimit),
		Codecs:                 cfg.Replicas.Compression,

		RDBFormat:       r.rdbFormat,
		UserRDBFormats:  r.userFormats,
		RDBConvertLossy: cfg.Replicas.RDBConvertLossy,
		ConvertDir:      backlog.Layout(cfg.DataDir).Converted(),
		ConvertRate:     int64(cfg.Replicas.RDBConvertRate),
	}
}

func linkConfig(cfg Config, port int) upstream.Config {
	announce := cfg.Master.AnnouncePort
	if announce == 0 {
		announce = port
	}
	var dialTLS func(string) (*tls.Config, error) // nil: plain TCP
	if cfg.TLS.Upstream {
		dialTLS = cfg.TLS.clientConfig
	}
	return upstream.Config{
		Addr:           cfg.Master.Addr,
		User:           cfg.Master.User,
		Password:       cfg.Master.Password,
		ListenPort:     announce,
		ReplTimeout:    time.Duration(cfg.Master.ReplTimeout),
		ConnectTimeout: time.Duration(cfg.Master.ConnectTimeout),
		BackoffMin:     200 * time.Millisecond,
		BackoffMax:     5 * time.Second,
		AckMode:        cfg.AckMode,
		AckQuorum:      cfg.AckQuorum,
		TLS:            dialTLS,
		Codecs:         upstream.AskedCodecs(cfg.Master.Compression),
		DataDir:        cfg.DataDir,
		SegmentBytes:   int64(cfg.Backlog.SegmentBytes),
	}
}

func refreshConfig(cfg Config) upstream.RefreshConfig {
	after := int64(cfg.Snapshot.RefreshAfter)
	if after == 0 {
		after = int64(cfg.Backlog.MaxBytes) / 2
	}
	return upstream.RefreshConfig{
		AfterBytes:  after,
		MinInterval: time.Duration(cfg.Snapshot.MinInterval),
		HoldTimeout: time.Duration(cfg.Master.ReplTimeout),
		MaxPerHour:  cfg.Snapshot.MaxRefreshesPerHour,
	}
}

// stats are the upstream side's counters for INFO stats.
func (p *Proxy) stats() []fanout.KV {
	return append(p.link.Stats(),
		fanout.KV{Key: "snapshot_refreshes", Value: p.snap.Refreshes.Load()},
		fanout.KV{Key: "snapshot_refresh_failures", Value: p.snap.Failures.Load()},
		fanout.KV{Key: "snapshot_refreshes_refused", Value: p.snap.Refused.Load()},
		// Redis 7's names, so redis_exporter's net_repl_*_bytes_total work.
		fanout.KV{Key: "total_net_repl_input_bytes", Value: p.link.WireBytes.Load()},
		fanout.KV{Key: "total_net_repl_output_bytes", Value: p.fan.BytesSent()},
		fanout.KV{Key: "upstream_fallback_full_syncs", Value: p.snap.Fallbacks.Load()},
	)
}

func listen(cfg Config) (net.Listener, *serverTLS, error) {
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, nil, fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	if !cfg.TLS.Listen {
		return ln, nil, nil
	}
	st, err := newServerTLS(cfg.TLS)
	if err != nil {
		ln.Close()
		return nil, nil, err
	}
	return tls.NewListener(ln, st.config()), st, nil
}

// Reload applies a re-read configuration (SIGHUP). The master address takes
// effect at once, and the TLS certificate, key and CA are read again for new
// connections; other settings need a restart, and the log says which.
func (p *Proxy) Reload(r Resolved) error {
	cfg := r.Config
	if p.tls != nil && cfg.TLS.Listen {
		if err := p.tls.reload(cfg.TLS); err != nil {
			return fmt.Errorf("reload: %w", err)
		}
		p.log.Info().Str("cert", cfg.TLS.Cert).Msg("TLS certificate reloaded")
	}
	if !p.cfg.Master.Sentinel.enabled() && !p.cfg.Master.Cluster.enabled() && cfg.Master.Addr != p.cfg.Master.Addr {
		p.link.Repoint(cfg.Master.Addr, "config reload (SIGHUP)")
	}
	old, next := p.cfg, cfg
	old.Master.Addr, next.Master.Addr = "", ""
	old.TLS.Cert, old.TLS.Key, old.TLS.CA = next.TLS.Cert, next.TLS.Key, next.TLS.CA
	// The upstream link reads its TLS files again at each connection.
	if fmt.Sprint(old) != fmt.Sprint(next) {
		p.log.Warn().Msg("config reload: only master.addr and the TLS files change at runtime; restart to apply the other changes")
	}
	p.cfg.Master.Addr = cfg.Master.Addr
	p.log.Info().Str("master", cfg.Master.Addr).Msg("config reloaded")
	return nil
}

// Addr is the downstream listen address.
func (p *Proxy) Addr() net.Addr { return p.ln.Addr() }

// Port is the downstream listen port.
func (p *Proxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

// Run serves until ctx ends, then stops every goroutine and closes the store.
func (p *Proxy) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p.log.Info().Str("listen", p.ln.Addr().String()).Str("master", p.cfg.Master.Addr).
		Str("data_dir", p.cfg.DataDir).Msg("replproxy starting")
	p.warnIfOpen()
	p.warnDiskSize()
	p.warnMetricsOpen()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	// fatal runs a part whose failure ends the whole process.
	fatal := func(run func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := run(ctx); err != nil {
				errs <- err
				cancel()
			}
		}()
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		p.runUpstream(ctx, &wg)
	}()
	go func() {
		defer wg.Done()
		p.snap.Run(ctx)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.progress.run(ctx)
	}()
	fatal(func(ctx context.Context) error { return p.fan.Serve(ctx, p.ln) })
	if p.cfg.MetricsListen != "" {
		fatal(p.serveMetrics)
	}
	if p.cfg.PprofListen != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			servePprof(ctx, p.cfg.PprofListen, p.log)
		}()
	}
	<-ctx.Done()
	wg.Wait()
	err := p.store.Close()
	select {
	case e := <-errs:
		err = errors.Join(e, err)
	default:
	}
	p.log.Info().Msg("replproxy stopped")
	return err
}

// runUpstream drives the link; with Sentinel or a cluster it first learns
// the master, then keeps following it.
func (p *Proxy) runUpstream(ctx context.Context, wg *sync.WaitGroup) {
	if p.watch != nil && !p.follow(ctx, wg, p.watch, "named by sentinel at startup") {
		return
	}
	if p.cluster != nil && !p.follow(ctx, wg, p.cluster, "cluster shard primary at startup") {
		return
	}
	p.link.Run(ctx)
}

// follow points the link at the master src names first, then keeps src
// following it; false when ctx ends before src names one.
func (p *Proxy) follow(ctx context.Context, wg *sync.WaitGroup, src interface {
	resolveUntil(context.Context) (string, error)
	run(context.Context)
}, why string) bool {
	addr, err := src.resolveUntil(ctx)
	if err != nil {
		return false
	}
	p.link.Repoint(addr, why)
	wg.Add(1)
	go func() {
		defer wg.Done()
		src.run(ctx)
	}()
	return true
}

// warnIfOpen says at startup what a port without credentials means.
func (p *Proxy) warnIfOpen() {
	if p.cfg.RequirePass != "" || len(p.cfg.Users) > 0 {
		return
	}
	ip := p.ln.Addr().(*net.TCPAddr).IP
	if ip.IsLoopback() {
		return
	}
	if p.cfg.ProtectedMode {
		p.log.Warn().Msg("protected mode: no password and no users are configured, so only loopback clients are served; " +
			"set requirepass (or users) to serve replicas on other hosts")
		return
	}
	p.log.Warn().Msg("protected_mode is off and no password is set: anyone who reaches this port can read the whole dataset and repoint the proxy")
}
