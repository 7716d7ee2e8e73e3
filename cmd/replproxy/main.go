// Command replproxy is a transparent replication proxy for Redis: one replica
// to its master, a master to any number of replicas, with a disk backlog.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/urfave/cli/v2"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/proxy"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "replproxy:", err)
		os.Exit(1)
	}
}

func newApp() *cli.App {
	return &cli.App{
		Name:    "replproxy",
		Usage:   "a transparent replication proxy for Redis",
		Version: version,
		Commands: []*cli.Command{
			runCommand(),
			{
				Name:  "version",
				Usage: "print the version",
				Action: func(c *cli.Context) error {
					fmt.Fprintln(c.App.Writer, "replproxy", version)
					return nil
				},
			},
			checkConfigCommand(),
			verifyCommand(),
			statusCommand(),
			inspectCommand(),
			probeCommand(),
			restoreCommand(),
			exportCommand(),
		},
	}
}

func configFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "YAML config file"},
		&cli.StringFlag{Name: "listen", Usage: "downstream listen address (host:port)"},
		&cli.StringFlag{Name: "master", Usage: "master address (host:port)"},
		&cli.StringFlag{Name: "data-dir", Usage: "directory for the backlog, snapshot and meta"},
		&cli.StringFlag{Name: "master-user", Usage: "ACL user for AUTH to the master"},
		&cli.StringFlag{Name: "master-password", Usage: "password for AUTH to the master", EnvVars: []string{"REPLPROXY_MASTER_PASSWORD"}},
		&cli.StringFlag{Name: "requirepass", Usage: "password downstream clients must AUTH with", EnvVars: []string{"REPLPROXY_REQUIREPASS"}},
		&cli.StringFlag{Name: "log-level", Usage: "debug, info, warn or error"},
		&cli.StringFlag{Name: "log-format", Usage: "auto, console or json"},
		&cli.StringFlag{Name: "metrics-listen", Usage: "address for Prometheus /metrics (empty: off)"},
	}
}

// loadConfig reads the file, if any, lets flags override it, and resolves
// the result.
func loadConfig(c *cli.Context) (proxy.Resolved, error) {
	cfg := proxy.Defaults()
	if path := c.String("config"); path != "" {
		var err error
		if cfg, err = proxy.LoadConfig(path); err != nil {
			return proxy.Resolved{}, err
		}
	}
	override := map[string]*string{
		"listen": &cfg.Listen, "master": &cfg.Master.Addr, "data-dir": &cfg.DataDir,
		"master-user": &cfg.Master.User, "master-password": &cfg.Master.Password,
		"requirepass": &cfg.RequirePass, "log-level": &cfg.Log.Level, "log-format": &cfg.Log.Format,
		"metrics-listen": &cfg.MetricsListen,
	}
	for name, dst := range override {
		if c.IsSet(name) {
			*dst = c.String(name)
		}
	}
	return cfg.Resolve()
}

// passwordFlagWarnings names the passwords given as flags: every local
// user can read a command line (ps, /proc/PID/cmdline).
func passwordFlagWarnings(c *cli.Context) []string {
	var out []string
	for _, f := range []struct{ flag, env, key string }{
		{"requirepass", "REPLPROXY_REQUIREPASS", "requirepass_file"},
		{"master-password", "REPLPROXY_MASTER_PASSWORD", "master.password_file"},
	} {
		if !c.IsSet(f.flag) {
			continue
		}
		if env, ok := os.LookupEnv(f.env); ok && env == c.String(f.flag) {
			continue // from the environment, not from the command line
		}
		out = append(out, fmt.Sprintf("--%s on the command line is visible to every local user (ps, /proc); set %s or %s in the config instead",
			f.flag, f.env, f.key))
	}
	return out
}

func runCommand() *cli.Command {
	return &cli.Command{
		Name:  "run",
		Usage: "run the proxy",
		Flags: configFlags(),
		Action: func(c *cli.Context) error {
			cfg, err := loadConfig(c)
			if err != nil {
				return err
			}
			logger, err := newLogger(cfg.Log, os.Stderr)
			if err != nil {
				return err
			}
			for _, w := range passwordFlagWarnings(c) {
				logger.Warn().Msg(w)
			}
			// go-redis (the Sentinel and cluster lookups) logs through a process-wide
			// logger; route it into ours so every line has one format.
			redis.SetLogger(redisLog{logger.With().Str("component", "redis-client").Logger()})
			p, err := proxy.NewGroup(cfg, logger, version)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			go reloadOnHUP(ctx, c, p, logger)
			return p.Run(ctx)
		},
	}
}

type redisLog struct{ log zerolog.Logger }

func (r redisLog) Printf(_ context.Context, format string, v ...any) {
	r.log.Warn().Msgf(format, v...)
}

// reloadOnHUP re-reads the configuration on SIGHUP; a bad file is logged
// and ignored, and the proxy keeps running as it was.
func reloadOnHUP(ctx context.Context, c *cli.Context, p *proxy.Group, log zerolog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		cfg, err := loadConfig(c)
		if err == nil {
			err = p.Reload(cfg)
		}
		if err != nil {
			log.Error().Err(err).Msg("config reload failed; keeping the running configuration")
		}
	}
}

func checkConfigCommand() *cli.Command {
	return &cli.Command{
		Name:  "check-config",
		Usage: "validate a configuration and print it with defaults filled in",
		Flags: append(configFlags(), strictFlag()),
		Action: func(c *cli.Context) error {
			cfg, err := loadConfig(c)
			if err != nil {
				return err
			}
			for _, w := range passwordFlagWarnings(c) {
				fmt.Fprintln(c.App.ErrWriter, "warning:", w)
			}
			if err := securityWarnings(c, cfg.Config); err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "ok: listen %s, master %s, data_dir %s, backlog %d bytes, fsync %s\n",
				cfg.Listen, cfg.Master.Addr, cfg.DataDir, cfg.Backlog.MaxBytes, cfg.Backlog.Fsync)
			for _, p := range cfg.Pipelines {
				fmt.Fprintf(c.App.Writer, "pipeline %s: listen %s, shard %s, data_dir %s\n", p.Name, p.Listen, p.Shard, filepath.Join(cfg.DataDir, p.Name))
			}
			for _, w := range proxy.DiskSizeWarnings(cfg.Config) {
				fmt.Fprintln(c.App.ErrWriter, "warning:", w)
			}
			return printEffective(c.App.Writer, cfg.Config)
		},
	}
}

func verifyCommand() *cli.Command {
	return &cli.Command{
		Name:  "verify",
		Usage: "check a data dir: meta checksum, the CRC-64 of the snapshot and of every kept one, every backlog segment's CRCs, and say what the proxy does about damage",
		Flags: []cli.Flag{&cli.StringFlag{Name: "data-dir", Required: true, Usage: "the proxy's data dir"}},
		Action: func(c *cli.Context) error {
			rep, err := backlog.Verify(c.String("data-dir"))
			if err != nil {
				return err
			}
			w := c.App.Writer
			fmt.Fprintf(w, "replid %s (replid2 %s up to %d)\n", rep.Meta.ReplID, rep.Meta.ReplID2, rep.Meta.SecondOffset)
			if snap := rep.Meta.Snapshot; snap != nil {
				fmt.Fprintf(w, "snapshot %s at offset %d, %d bytes\n", snap.File, snap.Offset, snap.Size)
			}
			for _, o := range rep.Meta.History {
				fmt.Fprintf(w, "kept snapshot %s at offset %d, %d bytes\n", o.File, o.Offset, o.Size)
			}
			fmt.Fprintf(w, "backlog: %d segments, offsets [%d, %d), %d bytes\n", rep.Segments, rep.First, rep.End, rep.End-rep.First)
			for i, p := range rep.Problems {
				fmt.Fprintln(w, "PROBLEM:", p)
				fmt.Fprintln(w, "  then:", rep.Actions[i])
			}
			if len(rep.Problems) > 0 {
				return fmt.Errorf("%d problem(s) found; what the proxy does about each is printed above", len(rep.Problems))
			}
			fmt.Fprintln(w, "ok")
			return nil
		},
	}
}

// printEffective shows the settings in force, defaults and flags applied,
// as the README and --help promise; passwords are hidden.
func printEffective(w io.Writer, cfg proxy.Config) error {
	out, err := cfg.EffectiveYAML()
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "# effective configuration: defaults filled in, flags and environment applied, passwords hidden")
	_, err = w.Write(out)
	return err
}

// newLogger writes for people on a terminal and JSON for log pipelines.
func newLogger(cfg proxy.LogConfig, w *os.File) (zerolog.Logger, error) {
	level, err := zerolog.ParseLevel(strings.ToLower(cfg.Level))
	if err != nil || cfg.Level == "" {
		return zerolog.Logger{}, fmt.Errorf("log.level %q: want debug, info, warn or error", cfg.Level)
	}
	var out io.Writer = w
	switch cfg.Format {
	case "console":
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339}
	case "json":
	case "auto", "":
		if isatty.IsTerminal(w.Fd()) {
			out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339}
		}
	default:
		return zerolog.Logger{}, fmt.Errorf("log.format %q: want auto, console or json", cfg.Format)
	}
	return zerolog.New(out).Level(level).With().Timestamp().Logger(), nil
}
