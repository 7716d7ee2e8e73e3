package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/replproxy/replproxy/proxy"
)

// Issue 22, point 2: a foreign HTTP server that answers 200 to every path
// (redis_exporter on its port, say) is not a healthy proxy.
func TestProbeRefusesAForeignServer(t *testing.T) {
	foreign := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "<html>Redis Exporter</html>")
	}))
	defer foreign.Close()
	addr := strings.TrimPrefix(foreign.URL, "http://")
	for _, args := range [][]string{{"probe", "--addr", addr}, {"probe", "--ready", "--addr", addr}} {
		out, err := runCLI(t, args...)
		if err == nil || !strings.Contains(err.Error(), "not a replproxy") {
			t.Fatalf("%v against a foreign server: %q %v", args, out, err)
		}
	}

	named := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set(proxy.HealthHeader, proxy.HealthHeaderValue)
		fmt.Fprintln(w, "ok")
	}))
	defer named.Close()
	if out, err := runCLI(t, "probe", "--addr", strings.TrimPrefix(named.URL, "http://")); err != nil {
		t.Fatalf("probe against a server naming itself: %q %v", out, err)
	}
}

// The probe's default address is no well-known exporter's: Prometheus
// allocates 9100-9999 to exporters.
func TestProbeDefaultPortIsNoExporters(t *testing.T) {
	port := defaultMetricsAddr[strings.LastIndexByte(defaultMetricsAddr, ':')+1:]
	if port >= "9100" && port <= "9999" && len(port) == 4 {
		t.Fatalf("default metrics address %s is in Prometheus' exporter range", defaultMetricsAddr)
	}
}

// The shipped examples use the probe's default port, which is no
// exporter's, and the systemd health check probes that same address.
func TestDeployMetricsPortIsTheProbes(t *testing.T) {
	_, port, _ := strings.Cut(defaultMetricsAddr, ":")
	files := []string{
		"../../deploy/systemd/replproxy-health.service",
		"../../deploy/kubernetes/configmap.yaml",
		"../../deploy/kubernetes/statefulset.yaml",
		"../../deploy/kubernetes/services.yaml",
		"../../deploy/kubernetes/cluster/generate.sh",
		"../../deploy/container/config.yaml",
		"../../deploy/container/Dockerfile",
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		text := string(raw)
		if strings.Contains(text, "9121") {
			t.Errorf("%s still uses 9121, redis_exporter's port", f)
		}
		if !strings.Contains(text, port) {
			t.Errorf("%s does not use the metrics port %s", f, port)
		}
	}
}
