package proxy

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestExampleConfigLoads(t *testing.T) {
	cfg, err := LoadConfig("../config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("config.yaml does not validate: %v", err)
	}
}

func TestConfigUnitsAndDefaults(t *testing.T) {
	cfg, err := LoadConfig(writeConfig(t, "master:\n  addr: 10.0.0.1:6379\n  repl_timeout: 90s\nbacklog:\n  max_bytes: 100GiB\n  fsync: always\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Backlog.MaxBytes != 100<<30 || cfg.Backlog.SegmentBytes != 64<<20 {
		t.Fatalf("sizes %d %d", cfg.Backlog.MaxBytes, cfg.Backlog.SegmentBytes)
	}
	if time.Duration(cfg.Master.ReplTimeout) != 90*time.Second || cfg.Listen != "127.0.0.1:6380" {
		t.Fatalf("durations/defaults: %+v", cfg)
	}
}

// A bad config names what is wrong, so an operator can fix it at once.
func TestConfigErrorsAreClear(t *testing.T) {
	cases := []struct{ body, want string }{
		{"master:\n  adr: x:1\n", "line 2: unknown key master.adr (known keys under master: addr, "},
		{"users:\n  - {name: a, role: admin}\n  - {name: b, rol: admin}\n", "unknown key users[1].rol"},
		{"master:\n  addr: x:1\n  sentinel:\n    adrs: [h:1]\n", "unknown key master.sentinel.adrs"},
		{"bogus: 1\n", "unknown key bogus (known keys at the top level: "},
		{"master:\n  addr: x:1\nbacklog:\n  max_bytes: lots\n", `"lots" is not a size`},
		{"master:\n  addr: x:1\n  repl_timeout: soon\n", `"soon" is not a duration`},
		{"master:\n  addr: x:1\nbacklog:\n  fsync: sometimes\n", `fsync policy "sometimes"`},
		{"listen: 6380\nmaster:\n  addr: x:1\n", "listen \"6380\": want host:port"},
		{"backlog:\n  fsync: always\n", "master.addr is required"},
		{"master:\n  sentinel:\n    addrs: [h:1]\n    name: m\n    failover_pause: -1s\n", "master.sentinel.failover_pause -1s: must be 0 (off) or positive"},
		{"master:\n  cluster:\n    seeds: [h:1]\n    shard: \"5460\"\n", "a slot number cannot name a shard"},
		{"master:\n  cluster:\n    seeds: [h:1]\n    shard: primary-a\n", "40-hex-digit node ID"},
		{"master:\n  addr: x:1\n  cluster:\n    seeds: [h:1]\n    shard: " + nodeID('a') + "\n", "master.cluster excludes master.addr"},
		{"master:\n  cluster:\n    seeds: [h]\n    shard: " + nodeID('a') + "\n", `seeds entry "h": want host:port`},
		{"pipelines:\n  - {name: a, listen: 'x:1', shard: " + nodeID('a') + "}\n", "pipelines need master.cluster.seeds"},
		{"master:\n  cluster:\n    seeds: [h:1]\npipelines:\n  - {name: a, listen: 'x:1', shard: " + nodeID('a') + "}\n  - {name: b, listen: 'x:1', shard: " + nodeID('b') + "}\n", "pipelines a and b have the same listen x:1"},
		{"master:\n  cluster:\n    seeds: [h:1]\npipelines:\n  - {name: ../a, listen: 'x:1', shard: " + nodeID('a') + "}\n", `pipelines[0].name "../a"`},
		{"master:\n  cluster:\n    seeds: [h:1]\npipelines:\n  - {name: a, listen: 'x:1', shard: '12'}\n", "pipeline a: master.cluster.shard \"12\": a slot number"},
		{"master:\n  addr: x:1\nsnapshot:\n  min_interval: 500ms\n", "snapshot.min_interval 500ms: must be at least 1s"},
		{"master:\n  addr: x:1\npprof_listen: 0.0.0.0:6060\n", "pprof_listen \"0.0.0.0:6060\": must be a loopback address"},
		{"master:\n  addr: x:1\n  compression: lz4\n", `master.compression "lz4": want auto, s2, zstd or none`},
		{"master:\n  addr: x:1\nreplicas:\n  compression: [s2, brotli]\n", `replicas.compression "brotli"`},
	}
	for _, c := range cases {
		cfg, err := LoadConfig(writeConfig(t, c.body))
		if err == nil {
			err = cfg.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("config %q: error %v, want it to mention %q", c.body, err, c.want)
		}
	}
}

// Issue 10: users with roles, password files and hashes, and the secure
// defaults (protected mode, maxclients, AUTH deadline, TLS client certs).
func TestSecurityConfig(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "req"), []byte("from-file\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "repl"), []byte("replica-secret"), 0o600)
	cfg, err := LoadConfig(writeConfig(t, `master:
  addr: 10.0.0.1:6379
requirepass_file: `+filepath.Join(dir, "req")+`
users:
  - {name: repl, password_file: `+filepath.Join(dir, "repl")+`, role: replica}
  - {name: mon, password: "#`+strings.Repeat("ab", 32)+`", role: monitor}
`))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.ProtectedMode || cfg.MaxClients != 10000 || time.Duration(cfg.AuthTimeout) != 10*time.Second {
		t.Fatalf("defaults: protected %v, maxclients %d, auth_timeout %s", cfg.ProtectedMode, cfg.MaxClients, time.Duration(cfg.AuthTimeout))
	}
	r, err := cfg.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	users := r.users
	if len(users) != 3 || users[0].Name != "default" || users[0].Role != "admin" || users[1].Role != "replica" || users[2].PassHash[0] != 0xab {
		t.Fatalf("users: %+v", users)
	}
	if r.RequirePass != "from-file" || r.Users[0].Password != "replica-secret" {
		t.Fatalf("secrets read: %q %q", r.RequirePass, r.Users[0].Password)
	}

	bad := []struct{ body, want string }{
		{"users:\n  - {name: a, password: x, role: root}\n", `role "root": want replica, monitor, proxy or admin`},
		{"users:\n  - {name: a, password: x, role: admin}\n  - {name: a, password: y, role: admin}\n", `user "a" is defined twice`},
		{"requirepass: x\nusers:\n  - {name: default, password: y, role: admin}\n", `user "default" is defined twice`},
		{"users:\n  - {name: a, password: '#abc', role: admin}\n", "64 hex digits"},
		{"users:\n  - {name: a, role: admin}\n", "password (or password_file) is required"},
		{"requirepass: x\nrequirepass_file: " + filepath.Join(dir, "req") + "\n", "requirepass is set both directly"},
		{"requirepass_file: " + filepath.Join(dir, "missing") + "\n", "read password file"},
		{"maxclients: 0\n", "maxclients 0"},
		{"tls:\n  listen: true\n  cert: c\n  key: k\n", "tls.auth_clients yes (the default, as in Redis)"},
		{"tls:\n  auth_clients: maybe\n", `tls.auth_clients "maybe"`},
	}
	for _, c := range bad {
		cfg, err := LoadConfig(writeConfig(t, "master:\n  addr: x:1\n"+c.body))
		if err == nil {
			err = cfg.loadSecrets()
		}
		if err == nil {
			err = cfg.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("config %q: error %v, want it to mention %q", c.body, err, c.want)
		}
	}
}

// Issue 10: the deploy examples are safe as shipped. The container keeps
// protected mode on; Kubernetes requires the Secret and gives replicas a
// user that cannot repoint the proxy.
func TestDeployExamplesAreSafe(t *testing.T) {
	cfg, err := LoadConfig("../deploy/container/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.ProtectedMode || cfg.RequirePass != "" || len(cfg.Users) != 0 {
		t.Fatalf("container config: protected_mode %v with a password baked in: %q %v", cfg.ProtectedMode, cfg.RequirePass, cfg.Users)
	}
	// Issue 23: no example serves /metrics to the network without credentials.
	if w := SecurityWarnings(cfg); len(w) > 0 {
		t.Fatalf("container config: %q", w)
	}

	raw, err := os.ReadFile("../deploy/kubernetes/configmap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Data map[string]string `yaml:"data"`
	}
	if err := yaml.Unmarshal(raw, &cm); err != nil {
		t.Fatal(err)
	}
	secrets := t.TempDir()
	for _, k := range []string{"replica-password", "admin-password", "metrics-token"} {
		os.WriteFile(filepath.Join(secrets, k), []byte(k+"-value\n"), 0o600)
	}
	cfg, err = LoadConfig(writeConfig(t, strings.ReplaceAll(cm.Data["config.yaml"], "/run/secrets/replproxy", secrets)))
	var r Resolved
	if err == nil {
		r, err = cfg.Resolve()
	}
	if err != nil {
		t.Fatalf("kubernetes config: %v", err)
	}
	cfg, users := r.Config, r.users
	if !cfg.ProtectedMode || len(users) != 2 || users[0].Role != "replica" || users[1].Role != "admin" {
		t.Fatalf("kubernetes users: %+v", users)
	}
	if w := SecurityWarnings(cfg); len(w) > 0 || !metricsGuardOf(cfg).hasAuth() {
		t.Fatalf("kubernetes config: /metrics without credentials: %q", w)
	}
	sts, err := os.ReadFile("../deploy/kubernetes/statefulset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(sts), "optional: true") {
		t.Fatal("statefulset.yaml marks a secret optional")
	}
	// The kubelet's default mode, 0644, would be refused (issue 23, point 7).
	if !strings.Contains(string(sts), "defaultMode: 0440") {
		t.Fatal("statefulset.yaml mounts the Secret readable by other users")
	}
}

func nodeID(c byte) string { return strings.Repeat(string(c), 40) }

// The cluster's nodes usually share one password: without its own,
// master.cluster uses the master's for CLUSTER SHARDS.
func TestClusterCredentialsDefaultToTheMasters(t *testing.T) {
	cfg := Defaults()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	cfg.Master.User, cfg.Master.Password = "repl", "secret"
	cfg.Master.Cluster.Seeds = []string{"127.0.0.1:1"}
	cfg.Master.Cluster.Shard = nodeID('d')
	r, err := cfg.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(r, zerolog.Nop(), "test")
	if err != nil {
		t.Fatal(err)
	}
	defer p.store.Close()
	defer p.ln.Close()
	if got := p.cluster.cfg; got.User != "repl" || got.Password != "secret" {
		t.Fatalf("cluster credentials %q/%q, want the master's", got.User, got.Password)
	}
}

// Issue 23, point 3: /metrics requires the configured bearer token or
// basic auth; the probes do not. A non-loopback listener without either is
// warned about.
func TestMetricsCredentials(t *testing.T) {
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	basic := filepath.Join(dir, "basic")
	os.WriteFile(token, []byte("s3cret-token\n"), 0o600)
	os.WriteFile(basic, []byte("scraper:s3cret-pass\n"), 0o600)
	for _, tc := range []struct {
		name      string
		set       func(*Config)
		good, bad func(*http.Request)
	}{
		{"bearer", func(c *Config) { c.MetricsBearerTokenFile = token },
			func(r *http.Request) { r.Header.Set("Authorization", "Bearer s3cret-token") },
			func(r *http.Request) { r.Header.Set("Authorization", "Bearer s3cret-tokenX") }},
		{"basic", func(c *Config) { c.MetricsBasicAuthFile = basic },
			func(r *http.Request) { r.SetBasicAuth("scraper", "s3cret-pass") },
			func(r *http.Request) { r.SetBasicAuth("scraper", "wrong") }},
	} {
		cfg := Defaults()
		cfg.Master.Addr = "127.0.0.1:6379"
		cfg.MetricsListen = "0.0.0.0:9121"
		if w := SecurityWarnings(cfg); len(w) != 1 || !strings.Contains(w[0], "metrics_listen 0.0.0.0:9121") {
			t.Fatalf("no credentials: warnings %q", w)
		}
		tc.set(&cfg)
		if err := cfg.loadSecrets(); err != nil {
			t.Fatal(err)
		}
		if err := cfg.Validate(); err != nil {
			t.Fatal(err)
		}
		if w := SecurityWarnings(cfg); len(w) != 0 {
			t.Fatalf("%s: warnings %q", tc.name, w)
		}
		g := metricsGuardOf(cfg)
		h := g.protect(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("metrics")) }))
		for _, c := range []struct {
			what string
			req  func(*http.Request)
			want int
		}{{"none", func(*http.Request) {}, 401}, {"wrong", tc.bad, 401}, {"right", tc.good, 200}} {
			r := httptest.NewRequest("GET", "/metrics", nil)
			c.req(r)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			if rec.Code != c.want {
				t.Fatalf("%s, %s credentials: %d, want %d", tc.name, c.what, rec.Code, c.want)
			}
		}
	}
}

// Issue 23, point 7: a password file that other users can read is refused,
// as ssh refuses such a key, unless allow_insecure_secret_files is set; a
// group-readable one only when the group is the proxy's own.
func TestInsecureSecretFilesAreRefused(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "pw")
	os.WriteFile(file, []byte("secret\n"), 0o600)
	load := func(extra string) error {
		cfg, err := LoadConfig(writeConfig(t, "master:\n  addr: x:1\nrequirepass_file: "+file+"\n"+extra))
		if err != nil {
			t.Fatal(err)
		}
		return cfg.loadSecrets()
	}
	if err := load(""); err != nil {
		t.Fatalf("mode 0600: %v", err)
	}
	for _, mode := range []os.FileMode{0o644, 0o604} {
		os.Chmod(file, mode)
		if err := load(""); err == nil || !strings.Contains(err.Error(), "other users can read it") {
			t.Fatalf("mode %#o: %v", mode, err)
		}
		if err := load("allow_insecure_secret_files: yes\n"); err != nil {
			t.Fatalf("mode %#o, allowed: %v", mode, err)
		}
	}
	// Group-readable: fine for the proxy's own group, refused for another.
	os.Chmod(file, 0o640)
	os.Chown(file, -1, os.Getegid())
	if err := load(""); err != nil {
		t.Fatalf("mode 0640, own group: %v", err)
	}
	if os.Geteuid() == 0 {
		os.Chown(file, -1, os.Getegid()+12345)
		if err := load(""); err == nil {
			t.Fatal("mode 0640, another group: accepted")
		}
	}
	// The metrics credentials too.
	os.Chmod(file, 0o644)
	cfg, _ := LoadConfig(writeConfig(t, "master:\n  addr: x:1\nmetrics_bearer_token_file: "+file+"\n"))
	if err := cfg.loadSecrets(); err == nil {
		t.Fatal("a world-readable metrics token file was accepted")
	}
}
