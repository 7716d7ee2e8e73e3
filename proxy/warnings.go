package proxy

import (
	"fmt"
	"net"
)

// SecurityWarnings lists what in c leaves data or state open to anyone who
// reaches a port: the proxy logs them at start, and check-config prints
// them (and with --strict refuses the file).
func SecurityWarnings(c Config) []string {
	var out []string
	listens := []string{c.Listen}
	if len(c.Pipelines) > 0 {
		listens = listens[:0]
		for _, p := range c.Pipelines {
			listens = append(listens, p.Listen)
		}
	}
	for _, l := range listens {
		if w := openPortWarning(c, l); w != "" {
			out = append(out, w)
		}
	}
	return append(out, MetricsWarnings(c)...)
}

// openPortWarning is said of a listen address off loopback with no
// password, no users and protected mode off: the whole dataset (SYNC) and
// REPLICAOF are anyone's.
func openPortWarning(c Config, listen string) string {
	if c.ProtectedMode || c.RequirePass != "" || c.RequirePassFile != "" || len(c.Users) > 0 {
		return ""
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil || isLoopbackHost(host) {
		return ""
	}
	return fmt.Sprintf("listen %s: protected_mode is off and no password or user is set: anyone who reaches this port can read the whole dataset and repoint the proxy", listen)
}

// isLoopbackHost is true for localhost and loopback IPs; "" and 0.0.0.0
// (every interface) are not.
func isLoopbackHost(host string) bool {
	ip := net.ParseIP(host)
	return host == "localhost" || (ip != nil && ip.IsLoopback())
}

// warnMetricsOpen logs MetricsWarnings at start.
func (p *Proxy) warnMetricsOpen() {
	for _, w := range MetricsWarnings(p.cfg) {
		p.log.Warn().Msg(w)
	}
}
