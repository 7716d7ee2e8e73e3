package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Issue 23, points 3 and 6: check-config warns of a port open to anyone
// (protected_mode off, no password, not on loopback) and of /metrics off
// loopback without credentials; --strict turns the warnings into a failure.
func TestCheckConfigSecurityWarnings(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ name, conf, warning string }{
		{"open port", "listen: 0.0.0.0:6380\nprotected_mode: no\n", "protected_mode is off and no password"},
		{"open metrics", "metrics_listen: 0.0.0.0:9121\n", "metrics_listen 0.0.0.0:9121 is not a loopback address"},
	} {
		conf := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".yaml")
		os.WriteFile(conf, []byte("master:\n  addr: 127.0.0.1:6379\n"+tc.conf), 0o600)
		out, err := runCLI(t, "check-config", "--config", conf)
		if err != nil || !strings.Contains(out, "warning: ") || !strings.Contains(out, tc.warning) {
			t.Fatalf("%s: %q %v", tc.name, out, err)
		}
		if _, err := runCLI(t, "check-config", "--strict", "--config", conf); err == nil || !strings.Contains(err.Error(), "--strict") {
			t.Fatalf("%s with --strict: %v", tc.name, err)
		}
	}
	// Safe as given: no warning, and --strict passes.
	conf := filepath.Join(dir, "safe.yaml")
	os.WriteFile(conf, []byte("master:\n  addr: 127.0.0.1:6379\nlisten: 0.0.0.0:6380\nprotected_mode: no\nrequirepass: x\nmetrics_listen: 127.0.0.1:9121\n"), 0o600)
	if out, err := runCLI(t, "check-config", "--strict", "--config", conf); err != nil || strings.Contains(out, "warning") {
		t.Fatalf("safe config: %q %v", out, err)
	}
}
