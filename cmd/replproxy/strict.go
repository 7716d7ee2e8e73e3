package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/replproxy/replproxy/proxy"
)

func strictFlag() cli.Flag {
	return &cli.BoolFlag{Name: "strict", Usage: "fail on any security warning, not only on errors"}
}

// securityWarnings prints what the configuration leaves open; with
// --strict, any of it fails the check.
func securityWarnings(c *cli.Context, cfg proxy.Config) error {
	warnings := proxy.SecurityWarnings(cfg)
	for _, w := range warnings {
		fmt.Fprintln(c.App.ErrWriter, "warning:", w)
	}
	if c.Bool("strict") && len(warnings) > 0 {
		return fmt.Errorf("--strict: %d security warning(s)", len(warnings))
	}
	return nil
}
