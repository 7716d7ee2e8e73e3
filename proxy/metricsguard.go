package proxy

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// The metrics listener's fixed timeouts: a scrape is one small request,
// its answer a few hundred kilobytes at most.
const (
	metricsReadTimeout  = 10 * time.Second
	metricsWriteTimeout = 30 * time.Second
)

// metricsGuard bounds the metrics and health listener: every connection
// holds a descriptor that the replication port needs too, so idle ones are
// closed and their number is capped; /metrics (which names replicas and
// the master) may require a bearer token or basic auth.
type metricsGuard struct {
	maxConns int
	idle     time.Duration
	token    string // bearer token, or ""
	user     string // basic auth, with pass, or ""
	pass     string
}

func metricsGuardOf(c Config) metricsGuard {
	g := metricsGuard{maxConns: c.MetricsMaxConnections, idle: time.Duration(c.MetricsIdleTimeout), token: c.metricsToken}
	if c.metricsBasic != "" {
		g.user, g.pass, _ = strings.Cut(c.metricsBasic, ":")
	}
	return g
}

func (g metricsGuard) hasAuth() bool { return g.token != "" || g.user != "" }

// server wraps h in an http.Server with every timeout set.
func (g metricsGuard) server(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       metricsReadTimeout,
		WriteTimeout:      metricsWriteTimeout,
		IdleTimeout:       g.idle,
	}
}

// protect requires the credentials on /metrics. /healthz and /readyz stay
// open: probes (a kubelet's httpGet) carry no secret, and they tell only
// whether the proxy serves.
func (g metricsGuard) protect(metrics http.Handler) http.Handler {
	if !g.hasAuth() {
		return metrics
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !g.authorized(r) {
			if g.token != "" {
				w.Header().Set("WWW-Authenticate", `Bearer realm="replproxy"`)
			} else {
				w.Header().Set("WWW-Authenticate", `Basic realm="replproxy"`)
			}
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		metrics.ServeHTTP(w, r)
	})
}

func (g metricsGuard) authorized(r *http.Request) bool {
	if g.token != "" {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		return ok && secretEqual(got, g.token)
	}
	user, pass, ok := r.BasicAuth()
	// Both halves are compared, always, so the time taken tells nothing.
	okUser := secretEqual(user, g.user)
	okPass := secretEqual(pass, g.pass)
	return ok && okUser && okPass
}

// secretEqual compares in constant time, whatever the lengths.
func secretEqual(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}

// listen opens addr with at most maxConns connections open at once. When
// all are taken, a new connection takes the slot of the one that has
// waited longest for a request (silent since it connected, or idle between
// requests); when every one is busy with a request, the new one is closed
// at once, so that it neither waits in the kernel's queue nor keeps a
// descriptor. A stranger who opens maxConns silent connections thus cannot
// shut out a kubelet's health probe.
func (g metricsGuard) listen(addr string) (*cappedListener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &cappedListener{Listener: ln, max: g.maxConns, open: map[*slotConn]bool{}}, nil
}

type cappedListener struct {
	net.Listener
	max  int
	mu   sync.Mutex
	open map[*slotConn]bool
}

func (l *cappedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		sc := &slotConn{Conn: c, l: l, waiting: true, since: time.Now()}
		l.mu.Lock()
		victim := l.oldestWaiting()
		if len(l.open) >= l.max && victim == nil {
			l.mu.Unlock()
			c.Close()
			continue
		}
		if len(l.open) >= l.max {
			delete(l.open, victim)
		} else {
			victim = nil
		}
		l.open[sc] = true
		l.mu.Unlock()
		if victim != nil {
			victim.Close()
		}
		return sc, nil
	}
}

// oldestWaiting is the open connection waiting longest for a request, or
// nil; the caller holds l.mu.
func (l *cappedListener) oldestWaiting() *slotConn {
	var v *slotConn
	for c := range l.open {
		if c.waiting && (v == nil || c.since.Before(v.since)) {
			v = c
		}
	}
	return v
}

// connState is the http.Server's ConnState hook: a connection is waiting
// while new (no whole request header read yet) or idle between requests.
func (l *cappedListener) connState(c net.Conn, st http.ConnState) {
	sc, ok := c.(*slotConn)
	if !ok {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	sc.waiting = st == http.StateNew || st == http.StateIdle
	if st != http.StateNew {
		sc.since = time.Now()
	}
}

// slotConn gives its slot back once, however often it is closed.
type slotConn struct {
	net.Conn
	l    *cappedListener
	once sync.Once
	// waiting and since are guarded by l.mu.
	waiting bool
	since   time.Time
}

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.open, c)
		c.l.mu.Unlock()
	})
	return err
}

// MetricsWarnings says what is unsafe about the metrics listener: bound to
// other hosts than loopback with no credentials, /metrics names the
// replicas and the master to anyone who reaches it.
func MetricsWarnings(c Config) []string {
	if c.MetricsListen == "" || c.MetricsBearerTokenFile != "" || c.MetricsBasicAuthFile != "" || metricsGuardOf(c).hasAuth() {
		return nil
	}
	host, _, err := net.SplitHostPort(c.MetricsListen)
	if err != nil {
		return nil // Validate reports it
	}
	if isLoopbackHost(host) {
		return nil
	}
	return []string{fmt.Sprintf("metrics_listen %s is not a loopback address and neither metrics_bearer_token_file nor metrics_basic_auth_file is set: "+
		"anyone who reaches it reads /metrics, which names the replicas and the master", c.MetricsListen)}
}

func (c Config) validateMetrics() error {
	if c.MetricsMaxConnections < 1 {
		return fmt.Errorf("metrics_max_connections %d: must be at least 1", c.MetricsMaxConnections)
	}
	if c.MetricsIdleTimeout < Duration(time.Second) {
		return fmt.Errorf("metrics_idle_timeout %s: must be at least 1s", time.Duration(c.MetricsIdleTimeout))
	}
	if (c.MetricsBearerTokenFile != "" || c.metricsToken != "") && (c.MetricsBasicAuthFile != "" || c.metricsBasic != "") {
		return fmt.Errorf("metrics_bearer_token_file and metrics_basic_auth_file are both set: choose one")
	}
	if c.metricsBasic != "" {
		if user, pass, ok := strings.Cut(c.metricsBasic, ":"); !ok || user == "" || pass == "" {
			return fmt.Errorf("metrics_basic_auth_file: want one line user:password")
		}
	}
	return nil
}

// loadMetricsSecrets reads the metrics credentials' files. They stay named
// in the configuration (a re-read on SIGHUP reads them again).
func (c *Config) loadMetricsSecrets() error {
	if c.MetricsBearerTokenFile != "" {
		s, err := readSecret(c.MetricsBearerTokenFile)
		if err != nil {
			return fmt.Errorf("metrics_bearer_token_file: %w", err)
		}
		c.metricsToken = s
	}
	if c.MetricsBasicAuthFile != "" {
		s, err := readSecret(c.MetricsBasicAuthFile)
		if err != nil {
			return fmt.Errorf("metrics_basic_auth_file: %w", err)
		}
		c.metricsBasic = s
	}
	return nil
}
