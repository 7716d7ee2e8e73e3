package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/fanout"
)

// PipelineConfig is one shard relayed by a process that relays several:
// its own port and data subdirectory, with the rest of the configuration
// (master.cluster seeds and credentials, backlog, replicas...) shared.
type PipelineConfig struct {
	Name         string `yaml:"name"`   // also the data subdirectory
	Listen       string `yaml:"listen"` // host:port for this shard's replicas
	Shard        string `yaml:"shard"`  // as master.cluster.shard
	AnnouncePort int    `yaml:"announce_port"`
	// Announce is this shard's master.cluster.announce.
	Announce []string `yaml:"announce"`
}

var pipelineName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// Expand returns one configuration per pipeline, or the configuration
// itself when it names no pipelines.
func (c Config) Expand() []Config {
	if len(c.Pipelines) == 0 {
		return []Config{c}
	}
	out := make([]Config, len(c.Pipelines))
	for i, p := range c.Pipelines {
		pc := c
		pc.Pipelines = nil
		pc.Listen = p.Listen
		pc.DataDir = filepath.Join(c.DataDir, p.Name)
		pc.MetricsListen = "" // one endpoint for the process, served by the Group
		pc.PprofListen = ""
		pc.Master.Cluster.Shard = p.Shard
		pc.Master.AnnouncePort = p.AnnouncePort
		if len(p.Announce) > 0 {
			pc.Master.Cluster.Announce = p.Announce
		}
		out[i] = pc
	}
	return out
}

func (c Config) validatePipelines() error {
	if err := validatePprofListen(c.PprofListen); err != nil {
		return err
	}
	if !c.Master.Cluster.enabled() {
		return errors.New("pipelines need master.cluster.seeds: each pipeline relays one cluster shard")
	}
	if c.Master.Cluster.Shard != "" {
		return errors.New("master.cluster.shard and pipelines exclude each other: name each shard in its pipeline")
	}
	if len(c.Master.Cluster.Announce) > 0 {
		return errors.New("master.cluster.announce and pipelines exclude each other: give each pipeline its announce list")
	}
	seen := map[string]string{}
	for i, p := range c.Pipelines {
		if !pipelineName.MatchString(p.Name) {
			return fmt.Errorf("pipelines[%d].name %q: want letters, digits, '.', '_' or '-' (it names the data subdirectory)", i, p.Name)
		}
		for _, key := range []string{"name " + p.Name, "listen " + p.Listen, "shard " + p.Shard} {
			if other, dup := seen[key]; dup {
				return fmt.Errorf("pipelines %s and %s have the same %s", other, p.Name, key)
			}
			seen[key] = p.Name
		}
	}
	for _, pc := range c.Expand() {
		if err := pc.Validate(); err != nil {
			return fmt.Errorf("pipeline %s: %w", filepath.Base(pc.DataDir), err)
		}
	}
	return nil
}

// Group runs every pipeline of one process. A pipeline that fails stops
// alone; the others keep serving their replicas.
type Group struct {
	cfg     Config
	log     zerolog.Logger
	names   []string
	proxies []*Proxy
}

// NewGroup opens every pipeline, or the single proxy the configuration
// describes; on error, nothing stays open.
func NewGroup(r Resolved, log zerolog.Logger, version string) (*Group, error) {
	if !r.resolved {
		return nil, errUnresolved
	}
	cfg := r.Config
	g := &Group{cfg: cfg, log: log}
	for i, pc := range cfg.Expand() {
		plog := log
		if len(cfg.Pipelines) > 0 {
			g.names = append(g.names, cfg.Pipelines[i].Name)
			plog = log.With().Str("pipeline", cfg.Pipelines[i].Name).Logger()
		}
		pr := r // the pipelines share all that Resolve parsed
		pr.Config = pc
		p, err := New(pr, plog, version)
		if err != nil {
			g.closeAll()
			return nil, err
		}
		g.proxies = append(g.proxies, p)
	}
	if len(cfg.Pipelines) > 0 {
		// Every pipeline's port answers with the whole process's map.
		for _, p := range g.proxies {
			p.fan.SetSlotMap(func() []fanout.SlotShard { return slotMap(g.proxies) })
		}
	}
	return g, nil
}

func (g *Group) closeAll() {
	for _, p := range g.proxies {
		p.ln.Close()
		p.store.Close()
	}
}

// Reload applies a re-read configuration to a single proxy; pipelines
// follow their shards on their own, so they need a restart for changes.
func (g *Group) Reload(r Resolved) error {
	if len(g.cfg.Pipelines) == 0 && len(r.Pipelines) == 0 {
		return g.proxies[0].Reload(r)
	}
	g.log.Warn().Msg("config reload: pipelines follow their shards themselves; restart to apply changes")
	return nil
}

// Run serves every pipeline until ctx ends.
func (g *Group) Run(ctx context.Context) error {
	if len(g.cfg.Pipelines) == 0 {
		return g.proxies[0].Run(ctx)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(g.proxies)+1)
	for i, p := range g.proxies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.Run(ctx); err != nil {
				g.log.Error().Err(err).Str("pipeline", g.names[i]).Msg("pipeline stopped; the others keep running")
				errs[i] = fmt.Errorf("pipeline %s: %w", g.names[i], err)
			}
		}()
	}
	if g.cfg.PprofListen != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			servePprof(ctx, g.cfg.PprofListen, g.log)
		}()
	}
	if g.cfg.MetricsListen != "" {
		for _, w := range MetricsWarnings(g.cfg) {
			g.log.Warn().Msg(w)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := serveRegistry(ctx, g.cfg.MetricsListen, metricsGuardOf(g.cfg), g.registry(), g.readiness); err != nil {
				errs[len(g.proxies)] = err
				cancel() // a misconfigured endpoint is the operator's to fix, not to run without
			}
		}()
	}
	<-ctx.Done()
	wg.Wait()
	return errors.Join(errs...)
}

// registry labels each pipeline's metrics with its name.
func (g *Group) registry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for i, p := range g.proxies {
		prometheus.WrapRegistererWith(prometheus.Labels{"pipeline": g.names[i]}, reg).MustRegister(collector{p}, p.fsyncHist)
	}
	return reg
}

// readiness is ready when every pipeline is: a shard whose relay is down
// is a hole in the far side's copy of the cluster.
func (g *Group) readiness(now time.Time) (bool, string) {
	var why []string
	ready := true
	for i, p := range g.proxies {
		ok, reason := p.readiness(now)
		ready = ready && ok
		why = append(why, g.names[i]+": "+reason)
	}
	return ready, strings.Join(why, "; ")
}

// Port of the i-th pipeline.
func (g *Group) Port(i int) int { return g.proxies[i].ln.Addr().(*net.TCPAddr).Port }
