package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/replproxy/replproxy/proxy"
)

// defaultMetricsAddr is outside Prometheus' exporter range (9100-9999, all
// allocated), so a probe with the default address does not reach, say,
// redis_exporter on 9121.
const defaultMetricsAddr = "127.0.0.1:8380"

// probeCommand checks /healthz or /readyz for hosts without curl (the
// container image has no shell) and for systemd timers: exit 0 when healthy.
func probeCommand() *cli.Command {
	return &cli.Command{
		Name:  "probe",
		Usage: "check a running proxy's /healthz (or /readyz with --ready); exits 1 when it fails",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "addr", Value: defaultMetricsAddr, Usage: "the proxy's metrics_listen address"},
			&cli.BoolFlag{Name: "ready", Usage: "check readiness (/readyz) instead of liveness (/healthz)"},
			&cli.DurationFlag{Name: "timeout", Value: 3 * time.Second, Usage: "give up after this long"},
		},
		Action: func(c *cli.Context) error {
			path := "/healthz"
			if c.Bool("ready") {
				path = "/readyz"
			}
			client := http.Client{Timeout: c.Duration("timeout")}
			addr := c.String("addr")
			res, err := client.Get("http://" + addr + path)
			if err != nil {
				return fmt.Errorf("probe %s: %w", path, err)
			}
			defer res.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
			text := strings.TrimSpace(string(body))
			if err := checkIsReplproxy(res, addr); err != nil {
				return fmt.Errorf("probe %s: %w", path, err)
			}
			if res.StatusCode != http.StatusOK {
				return fmt.Errorf("probe %s: %s: %s", path, res.Status, text)
			}
			fmt.Fprintln(c.App.Writer, text)
			return nil
		},
	}
}

// checkIsReplproxy refuses an answer that does not name the proxy: any
// HTTP server answers some paths with 200, and a probe that trusts it
// keeps a dead proxy from being restarted.
func checkIsReplproxy(res *http.Response, addr string) error {
	if res.Header.Get(proxy.HealthHeader) == proxy.HealthHeaderValue {
		return nil
	}
	server := res.Header.Get("Server")
	if server == "" {
		server = "unnamed"
	}
	return fmt.Errorf("%s answered %s without the %s header: it is not a replproxy (server %s); check --addr against the proxy's metrics_listen",
		addr, res.Status, proxy.HealthHeader, server)
}
