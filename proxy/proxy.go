// Package proxy wires replproxy together: the upstream link that acts as one
// replica of the master, the disk backlog it feeds, and the downstream server
// that acts as a master for any number of replicas.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/fanout"
)

// Proxy is one running replproxy.
type Proxy struct {
	cfg   Config
	log   zerolog.Logger
	store *backlog.Store
	fan   *fanout.Server
	link  *Link
	snap  *refresher
	watch *sentinelWatch // nil without Sentinel
	ln    net.Listener
}

// New opens the data dir and binds the listener, so that errors an operator
// must fix surface before anything runs.
func New(cfg Config, log zerolog.Logger, version string) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	store, err := openStore(cfg, log)
	if err != nil {
		return nil, err
	}
	ln, err := listen(cfg)
	if err != nil {
		store.Close()
		return nil, err
	}
	p := &Proxy{cfg: cfg, log: log, store: store, ln: ln}
	p.fan = fanout.New(fanoutConfig(cfg, store, p.Port(), version, log))
	p.link = NewLink(linkConfig(cfg, p.Port()), store, p.fan, log.With().Str("component", "upstream").Logger())
	p.snap = newRefresher(p.link, refreshConfig(cfg))
	p.fan.SetUpstream(p.link, p.stats, p.snap.Need)
	if cfg.Master.Sentinel.enabled() {
		p.watch = &sentinelWatch{cfg: cfg.Master.Sentinel, link: p.link, log: log.With().Str("component", "sentinel").Logger()}
	}
	return p, nil
}

func openStore(cfg Config, log zerolog.Logger) (*backlog.Store, error) {
	fsync, _ := backlog.ParseFsyncPolicy(cfg.Backlog.Fsync)
	return backlog.Open(cfg.DataDir, backlog.Options{
		Log: backlog.LogOptions{
			SegmentBytes: int64(cfg.Backlog.SegmentBytes),
			MaxBytes:     int64(cfg.Backlog.MaxBytes),
			MaxAge:       time.Duration(cfg.Backlog.MaxAge),
			Fsync:        fsync,
			HoldMaxBytes: holdMaxBytes(cfg),
		},
		Logger: log.With().Str("component", "backlog").Logger(),
	})
}

func holdMaxBytes(cfg Config) int64 {
	if cfg.Snapshot.HoldMaxBytes > 0 {
		return int64(cfg.Snapshot.HoldMaxBytes)
	}
	return int64(cfg.Backlog.MaxBytes)
}

func fanoutConfig(cfg Config, store *backlog.Store, port int, version string, log zerolog.Logger) fanout.Config {
	fsync, _ := backlog.ParseFsyncPolicy(cfg.Backlog.Fsync)
	return fanout.Config{
		Store:           store,
		RequirePass:     cfg.RequirePass,
		Logger:          log.With().Str("component", "fanout").Logger(),
		Version:         version,
		RunID:           backlog.RandomReplID(),
		Port:            port,
		ReplTimeout:     time.Duration(cfg.Replicas.Timeout),
		BacklogMaxBytes: int64(cfg.Backlog.MaxBytes),
		Fsync:           string(fsync),

		MaxLagBytes:            int64(cfg.Replicas.MaxLagBytes),
		MaxLag:                 time.Duration(cfg.Replicas.MaxLagSeconds),
		MaxConcurrentFullSyncs: cfg.Replicas.MaxConcurrentFullSyncs,
		RateLimit:              int64(cfg.Replicas.RateLimit),
	}
}

func linkConfig(cfg Config, port int) LinkConfig {
	announce := cfg.Master.AnnouncePort
	if announce == 0 {
		announce = port
	}
	return LinkConfig{
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
		TLS:            cfg.TLS,
		Compress:       cfg.Master.Compression == "zstd",
	}
}

func refreshConfig(cfg Config) RefreshConfig {
	after := int64(cfg.Snapshot.RefreshAfter)
	if after == 0 {
		after = int64(cfg.Backlog.MaxBytes) / 2
	}
	return RefreshConfig{
		AfterBytes:  after,
		MinInterval: time.Duration(cfg.Snapshot.MinInterval),
		HoldTimeout: time.Duration(cfg.Master.ReplTimeout),
	}
}

// stats are the upstream side's counters for INFO stats.
func (p *Proxy) stats() []fanout.KV {
	return append(p.link.Stats(),
		fanout.KV{Key: "snapshot_refreshes", Value: p.snap.count.Load()},
		fanout.KV{Key: "snapshot_refresh_failures", Value: p.snap.failed.Load()},
		fanout.KV{Key: "upstream_fallback_full_syncs", Value: p.snap.fallbacks.Load()},
	)
}

func listen(cfg Config) (net.Listener, error) {
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	if !cfg.TLS.Listen {
		return ln, nil
	}
	tcfg, err := cfg.TLS.serverConfig()
	if err != nil {
		ln.Close()
		return nil, err
	}
	return tls.NewListener(ln, tcfg), nil
}

// Reload applies a re-read configuration (SIGHUP). The master address takes
// effect at once; other settings need a restart, and the log says which.
func (p *Proxy) Reload(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	if !p.cfg.Master.Sentinel.enabled() && cfg.Master.Addr != p.cfg.Master.Addr {
		p.link.Repoint(cfg.Master.Addr, "config reload (SIGHUP)")
	}
	old, next := p.cfg, cfg
	old.Master.Addr, next.Master.Addr = "", ""
	if fmt.Sprint(old) != fmt.Sprint(next) {
		p.log.Warn().Msg("config reload: only master.addr changes at runtime; restart to apply the other changes")
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
		p.snap.run(ctx)
	}()
	fatal(func(ctx context.Context) error { return p.fan.Serve(ctx, p.ln) })
	if p.cfg.MetricsListen != "" {
		fatal(p.serveMetrics)
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

// runUpstream drives the link; with Sentinel it first learns the master,
// then keeps following it.
func (p *Proxy) runUpstream(ctx context.Context, wg *sync.WaitGroup) {
	if p.watch != nil {
		addr, err := p.watch.resolveUntil(ctx)
		if err != nil {
			return
		}
		p.link.Repoint(addr, "named by sentinel at startup")
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.watch.run(ctx)
		}()
	}
	p.link.Run(ctx)
}
