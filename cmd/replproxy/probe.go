package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
)

// probeCommand checks /healthz or /readyz for hosts without curl (the
// container image has no shell) and for systemd timers: exit 0 when healthy.
func probeCommand() *cli.Command {
	return &cli.Command{
		Name:  "probe",
		Usage: "check a running proxy's /healthz (or /readyz with --ready); exits 1 when it fails",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "addr", Value: "127.0.0.1:9121", Usage: "the proxy's metrics_listen address"},
			&cli.BoolFlag{Name: "ready", Usage: "check readiness (/readyz) instead of liveness (/healthz)"},
			&cli.DurationFlag{Name: "timeout", Value: 3 * time.Second, Usage: "give up after this long"},
		},
		Action: func(c *cli.Context) error {
			path := "/healthz"
			if c.Bool("ready") {
				path = "/readyz"
			}
			client := http.Client{Timeout: c.Duration("timeout")}
			res, err := client.Get("http://" + c.String("addr") + path)
			if err != nil {
				return fmt.Errorf("probe %s: %w", path, err)
			}
			defer res.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
			text := strings.TrimSpace(string(body))
			if res.StatusCode != http.StatusOK {
				return fmt.Errorf("probe %s: %s: %s", path, res.Status, text)
			}
			fmt.Fprintln(c.App.Writer, text)
			return nil
		},
	}
}
