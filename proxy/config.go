package proxy

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/fanout"
	"github.com/replproxy/replproxy/rdbconvert"
	"github.com/replproxy/replproxy/upstream"
)

// Config is the whole proxy configuration, as config.yaml spells it.
type Config struct {
	Listen  string `yaml:"listen"`
	DataDir string `yaml:"data_dir"`
	// ProtectedMode serves only loopback clients while no password and no
	// user is configured, as Redis' protected-mode does.
	ProtectedMode bool `yaml:"protected_mode"`
	// RequirePass is the default user's password (AUTH <password>); that
	// user has the admin role. RequirePassFile reads it from a file.
	RequirePass     string       `yaml:"requirepass"`
	RequirePassFile string       `yaml:"requirepass_file"`
	Users           []UserConfig `yaml:"users"`
	// MaxClients caps downstream connections, replicas included.
	MaxClients int `yaml:"maxclients"`
	// AuthTimeout closes a connection that has not authenticated by then
	// (only when a password or user is configured).
	AuthTimeout Duration `yaml:"auth_timeout"`
	// MultiMaxCommands and MultiMaxBytes cap what one MULTI may queue.
	MultiMaxCommands int    `yaml:"multi_max_commands"`
	MultiMaxBytes    Size   `yaml:"multi_max_bytes"`
	MetricsListen    string `yaml:"metrics_listen"`
	// PprofListen serves Go's profiles at /debug/pprof/ (empty: off). It
	// has no authentication, so only a loopback address is accepted.
	PprofListen string         `yaml:"pprof_listen"`
	Master      MasterConfig   `yaml:"master"`
	Backlog     BacklogConfig  `yaml:"backlog"`
	Snapshot    SnapshotConfig `yaml:"snapshot"`
	Damaged     DamagedConfig  `yaml:"damaged"`
	Replicas    ReplicaConfig  `yaml:"replicas"`
	Log         LogConfig      `yaml:"log"`
	TLS         TLSConfig      `yaml:"tls"`
	Health      HealthConfig   `yaml:"health"`
	// AckMode is what the proxy acknowledges to its master: upstream.AckStored or
	// upstream.AckReplicas; AckQuorum picks the replica ACK to use (0: all).
	AckMode   upstream.AckMode `yaml:"ack_mode"`
	AckQuorum int              `yaml:"ack_quorum"`
	// Pipelines relays several cluster shards from one process.
	Pipelines []PipelineConfig `yaml:"pipelines"`

	// MaxMemoryUnauthClients bounds the buffers of all unauthenticated
	// clients together (Redis 7's maxmemory-clients, for strangers only);
	// past it the largest are closed first.
	MaxMemoryUnauthClients Size `yaml:"maxmemory_unauthenticated_clients"`
	// The metrics listener's connection cap and idle timeout, and the
	// credentials /metrics requires (a bearer token, or user:password for
	// basic auth, each read from a file).
	MetricsMaxConnections  int      `yaml:"metrics_max_connections"`
	MetricsIdleTimeout     Duration `yaml:"metrics_idle_timeout"`
	MetricsBearerTokenFile string   `yaml:"metrics_bearer_token_file"`
	MetricsBasicAuthFile   string   `yaml:"metrics_basic_auth_file"`
	metricsToken           string   // read from MetricsBearerTokenFile
	metricsBasic           string   // read from MetricsBasicAuthFile
	// AllowInsecureSecretFiles accepts password files that other users
	// can read.
	AllowInsecureSecretFiles bool `yaml:"allow_insecure_secret_files"`
}

// MasterConfig is the upstream side.
type MasterConfig struct {
	Addr           string   `yaml:"addr"`
	User           string   `yaml:"user"`
	Password       string   `yaml:"password"`
	PasswordFile   string   `yaml:"password_file"`
	ReplTimeout    Duration `yaml:"repl_timeout"`
	ConnectTimeout Duration `yaml:"connect_timeout"`
	// AnnouncePort is sent as REPLCONF listening-port; default: the listen port.
	AnnouncePort int `yaml:"announce_port"`
	// Sentinel, when it lists sentinels, names the master instead of Addr.
	Sentinel SentinelConfig `yaml:"sentinel"`
	// Cluster, when it lists seeds, names a Redis Cluster shard to follow.
	Cluster ClusterConfig `yaml:"cluster"`
	// Compression asks an upstream replproxy for a compressed stream:
	// "auto" (the best codec both sides speak: s2, else zstd), "s2",
	// "zstd" or "none". A Redis master ignores the request.
	Compression string `yaml:"compression"`
}

// BacklogConfig is the disk log.
type BacklogConfig struct {
	MaxBytes     Size                `yaml:"max_bytes"`
	MaxAge       Duration            `yaml:"max_age"` // 0: retention by size only
	SegmentBytes Size                `yaml:"segment_bytes"`
	Fsync        backlog.FsyncPolicy `yaml:"fsync"`
	// ScrubRate bounds the background recheck of stored bytes against
	// their checksums, per second; 0 turns it off.
	ScrubRate Size `yaml:"scrub_rate"`
	// syncHook replaces fsync for every file of the data dir: a test's way
	// to make the disk fail (SetBacklogSync).
	syncHook backlog.SyncFunc
}

// SnapshotConfig says when the stored RDB is renewed from the master.
type SnapshotConfig struct {
	// RefreshAfter bytes of stream since the snapshot trigger an rdb-only
	// fetch; 0 means half of backlog.max_bytes.
	RefreshAfter Size     `yaml:"refresh_after"`
	MinInterval  Duration `yaml:"min_interval"`
	// Keep is how many snapshots are kept, the current one included, as
	// bases for replproxy restore (0 or 1: only the current one).
	Keep int `yaml:"keep"`
	// HoldMaxBytes is how far beyond backlog.max_bytes retention may keep
	// the stream that follows the snapshot, so the snapshot stays usable
	// until a newer one is adopted; 0 means backlog.max_bytes.
	HoldMaxBytes Size `yaml:"hold_max_bytes"`
	// MaxRefreshesPerHour bounds the refreshes, each a fork of the master,
	// in any hour, whoever asks: the proxy itself, a waiting replica or a
	// downstream replproxy.
	MaxRefreshesPerHour int `yaml:"max_refreshes_per_hour"`
}

// DamagedConfig bounds damaged/, where files found damaged are moved.
type DamagedConfig struct {
	// MaxBytes: past it, the undamaged segments moved aside with a damaged
	// one (stream the master can resend) are deleted, oldest first; what
	// was found damaged is kept. 0 means backlog.max_bytes.
	MaxBytes Size `yaml:"max_bytes"`
}

// ReplicaConfig is the downstream side.
type ReplicaConfig struct {
	Timeout                Duration `yaml:"timeout"` // a replica that accepts no byte for this long is dropped
	MaxLagBytes            Size     `yaml:"max_lag_bytes"`
	MaxLagSeconds          Duration `yaml:"max_lag_seconds"`
	MaxConcurrentFullSyncs int      `yaml:"max_concurrent_full_syncs"`
	RateLimit              Size     `yaml:"rate_limit"` // bytes per second per replica
	// Compression lists the codecs offered to downstream replproxies that
	// ask for one; an empty list offers none.
	Compression []string `yaml:"compression"`
	// RDBFormat is what replicas that announce no version load (e.g.
	// redis-7.2); the snapshot is converted for them when they cannot load
	// it. RDBConvertLossy converts what the target cannot hold (hash field
	// TTLs, module keys) with the loss counted, instead of refusing.
	RDBFormat       string `yaml:"rdb_format"`
	RDBConvertLossy bool   `yaml:"rdb_convert_lossy"`
	// RDBConvertRate caps how fast a conversion reads the snapshot, in
	// bytes per second (0: no limit).
	RDBConvertRate Size `yaml:"rdb_convert_rate"`
}

// LogConfig is the process log.
type LogConfig struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"` // auto, console or json
	// ProgressInterval is how often long work (full syncs, catch-ups) logs
	// its progress.
	ProgressInterval Duration `yaml:"progress_interval"`
}

// Defaults returns a configuration with every default filled in.
func Defaults() Config {
	return Config{
		Listen:           "127.0.0.1:6380",
		DataDir:          "./data",
		ProtectedMode:    true,
		MaxClients:       10000,
		AuthTimeout:      Duration(10 * time.Second),
		MultiMaxCommands: 1000,
		MultiMaxBytes:    1 << 20,
		Master: MasterConfig{
			ReplTimeout:    Duration(60 * time.Second),
			ConnectTimeout: Duration(5 * time.Second),
			Sentinel:       SentinelConfig{Poll: Duration(5 * time.Second), FailoverPause: Duration(5 * time.Second)},
			Cluster:        ClusterConfig{Poll: Duration(2 * time.Second)},
		},
		Backlog: BacklogConfig{
			MaxBytes:     1 << 30,
			SegmentBytes: 64 << 20,
			Fsync:        backlog.FsyncEverySec,
			ScrubRate:    16 << 20,
		},
		Snapshot: SnapshotConfig{MinInterval: Duration(5 * time.Minute), Keep: 1, MaxRefreshesPerHour: 6},
		Replicas: ReplicaConfig{Timeout: Duration(60 * time.Second), Compression: fanout.AllCodecs()},
		Log:      LogConfig{Level: "info", Format: "auto", ProgressInterval: Duration(10 * time.Second)},
		Health:   HealthConfig{ReadyMaxLag: Duration(30 * time.Second)},
		AckMode:  upstream.AckStored,

		MaxMemoryUnauthClients: fanout.DefaultUnauthMaxMemory,
		MetricsMaxConnections:  64,
		MetricsIdleTimeout:     Duration(30 * time.Second),
	}
}

// LoadConfig reads a YAML file over the defaults. Unknown keys are errors:
// a misspelt option silently ignored is worse than a refusal to start.
func LoadConfig(path string) (Config, error) {
	cfg := Defaults()
	f, err := os.Open(path)
	if err != nil {
		return cfg, fmt.Errorf("open config: %w", err)
	}
	defer f.Close()
	var doc yaml.Node
	if err := yaml.NewDecoder(f).Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	if err := checkKeys(&doc, reflect.TypeFor[Config](), ""); err != nil {
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	dec := yaml.NewDecoder(f)
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) { // io.EOF: an empty file
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Resolved is a configuration read once per start or SIGHUP: secrets
// loaded, checked, and parsed into the values the wiring takes, so that
// building a proxy from it cannot fail on the configuration.
type Resolved struct {
	Config
	users       []fanout.User
	userFormats map[string]rdbconvert.Format // users that name an RDB format
	rdbFormat   rdbconvert.Format
	// resolved is set by Resolve alone: a Resolved built around a Config
	// by hand has no users, so it would let every client in unchecked.
	resolved bool
}

// errUnresolved refuses a Resolved that Resolve did not make.
var errUnresolved = errors.New("the configuration was not resolved: build it with Config.Resolve")

// Resolve loads the secrets, validates, and parses; the caller's Config is
// left as it was.
func (c Config) Resolve() (Resolved, error) {
	c.Users = slices.Clone(c.Users) // loadSecrets writes the passwords into them
	if err := c.loadSecrets(); err != nil {
		return Resolved{}, err
	}
	if err := c.Validate(); err != nil {
		return Resolved{}, err
	}
	users, formats, err := c.fanoutUsers()
	if err != nil {
		return Resolved{}, err
	}
	format, err := rdbconvert.ParseFormat(c.Replicas.RDBFormat)
	if err != nil {
		return Resolved{}, fmt.Errorf("replicas.rdb_format: %w", err)
	}
	return Resolved{Config: c, users: users, userFormats: formats, rdbFormat: format, resolved: true}, nil
}

// Validate reports the first problem an operator must fix.
// minConvertRate is the lowest replicas.rdb_convert_rate taken.
const minConvertRate = 64 << 10

func (c Config) Validate() error {
	if len(c.Pipelines) > 0 {
		return c.validatePipelines()
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("listen %q: want host:port: %w", c.Listen, err)
	}
	if err := c.validateMaster(); err != nil {
		return err
	}
	if c.DataDir == "" {
		return errors.New("data_dir is required")
	}
	if c.Master.User != "" && c.Master.Password == "" {
		return errors.New("master.user is set but master.password is not")
	}
	if _, err := backlog.ParseFsyncPolicy(string(c.Backlog.Fsync)); err != nil {
		return fmt.Errorf("backlog.fsync: %w", err)
	}
	if c.Backlog.SegmentBytes < 1<<20 {
		return fmt.Errorf("backlog.segment_bytes is %s: must be at least 1MiB", c.Backlog.SegmentBytes)
	}
	if c.Backlog.MaxBytes < c.Backlog.SegmentBytes {
		return fmt.Errorf("backlog.max_bytes is %s, less than one segment (backlog.segment_bytes is %s): raise max_bytes or lower segment_bytes (in sizes, 1mb is 2^20 bytes and 1m is 10^6, as in redis.conf)",
			c.Backlog.MaxBytes, c.Backlog.SegmentBytes)
	}
	if mc := c.Master.Compression; mc != "" && mc != "none" && mc != "auto" && !fanout.KnownCodec(mc) {
		return fmt.Errorf("master.compression %q: want auto, s2, zstd or none", mc)
	}
	for _, codec := range c.Replicas.Compression {
		if !fanout.KnownCodec(codec) {
			return fmt.Errorf("replicas.compression %q: want a list of s2 and zstd", codec)
		}
	}
	if err := c.TLS.validate(); err != nil {
		return err
	}
	if err := c.validateClients(); err != nil {
		return err
	}
	if c.AckMode != upstream.AckStored && c.AckMode != upstream.AckReplicas {
		return fmt.Errorf("ack_mode %q: want stored or replicas", c.AckMode)
	}
	if c.AckQuorum < 0 || c.Replicas.MaxConcurrentFullSyncs < 0 {
		return errors.New("ack_quorum and replicas.max_concurrent_full_syncs must not be negative")
	}
	if _, err := rdbconvert.ParseFormat(c.Replicas.RDBFormat); err != nil {
		return fmt.Errorf("replicas.rdb_format: %w", err)
	}
	if r := c.Replicas.RDBConvertRate; r > 0 && r < minConvertRate {
		// A unit left out ("1" for "1mb") would keep every replica that
		// needs the conversion waiting for days.
		return fmt.Errorf("replicas.rdb_convert_rate %d bytes per second: at least 64KiB (a 1 GiB snapshot then converts in under 5 hours), or 0 for no cap", int64(r))
	}
	if c.Snapshot.Keep < 0 {
		return fmt.Errorf("snapshot.keep %d: must not be negative", c.Snapshot.Keep)
	}
	if c.Snapshot.MinInterval < Duration(time.Second) {
		return fmt.Errorf("snapshot.min_interval %s: must be at least 1s (each refresh forks the master)", time.Duration(c.Snapshot.MinInterval))
	}
	if c.Damaged.MaxBytes < 0 {
		return fmt.Errorf("damaged.max_bytes %d: must not be negative", c.Damaged.MaxBytes)
	}
	if c.Snapshot.MaxRefreshesPerHour < 1 {
		return fmt.Errorf("snapshot.max_refreshes_per_hour %d: must be at least 1 (a snapshot past retention can only be renewed by a refresh)", c.Snapshot.MaxRefreshesPerHour)
	}
	if c.Snapshot.HoldMaxBytes < 0 {
		return fmt.Errorf("snapshot.hold_max_bytes is %d bytes: must not be negative", int64(c.Snapshot.HoldMaxBytes))
	}
	if c.Master.ReplTimeout < Duration(time.Second) {
		return fmt.Errorf("master.repl_timeout %s: must be at least 1s", time.Duration(c.Master.ReplTimeout))
	}
	if c.Master.ConnectTimeout <= 0 { // a dialer's 0 waits on the kernel's connect timeout, minutes
		return fmt.Errorf("master.connect_timeout %s: must be positive, e.g. 5s", time.Duration(c.Master.ConnectTimeout))
	}
	if c.Replicas.Timeout < Duration(time.Second) { // 0 would drop every replica at its first write
		return fmt.Errorf("replicas.timeout %s: must be at least 1s", time.Duration(c.Replicas.Timeout))
	}
	return c.validateOps()
}

// validateOps checks the health and progress settings.
func (c Config) validateOps() error {
	if err := validatePprofListen(c.PprofListen); err != nil {
		return err
	}
	if err := c.validateMetrics(); err != nil {
		return err
	}
	if c.Health.ReadyMaxLag < 0 || c.Health.ReadyLinkDownGrace < 0 {
		return errors.New("health.ready_max_lag and health.ready_link_down_grace must not be negative")
	}
	if c.Log.ProgressInterval != 0 && c.Log.ProgressInterval < Duration(time.Second) {
		return fmt.Errorf("log.progress_interval %s: must be at least 1s", time.Duration(c.Log.ProgressInterval))
	}
	return nil
}

func (c Config) validateMaster() error {
	if c.Master.Cluster.enabled() {
		if c.Master.Sentinel.enabled() || c.Master.Addr != "" {
			return errors.New("master.cluster excludes master.addr and master.sentinel: give one way to find the master")
		}
		return c.Master.Cluster.validate()
	}
	if c.Master.Sentinel.enabled() {
		if c.Master.Sentinel.Name == "" {
			return errors.New("master.sentinel.name is required with master.sentinel.addrs")
		}
		if c.Master.Sentinel.Poll <= 0 {
			return fmt.Errorf("master.sentinel.poll %s: must be positive, e.g. 5s", time.Duration(c.Master.Sentinel.Poll))
		}
		if c.Master.Sentinel.FailoverPause < 0 {
			return fmt.Errorf("master.sentinel.failover_pause %s: must be 0 (off) or positive, e.g. 5s", time.Duration(c.Master.Sentinel.FailoverPause))
		}
		for _, a := range c.Master.Sentinel.Addrs {
			if _, _, err := net.SplitHostPort(a); err != nil {
				return fmt.Errorf("master.sentinel.addrs entry %q: want host:port: %w", a, err)
			}
		}
		return nil
	}
	if c.Master.Addr == "" {
		return errors.New("master.addr is required (host:port of the Redis master), or master.sentinel")
	}
	if _, _, err := net.SplitHostPort(c.Master.Addr); err != nil {
		return fmt.Errorf("master.addr %q: want host:port: %w", c.Master.Addr, err)
	}
	return nil
}

// Duration is a time.Duration written as "60s" or "5m" in YAML.
type Duration time.Duration

func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration like 60s or 5m", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// Size is a byte count, written as redis.conf writes one ("1k" is 1000,
// "1kb" 1024, "1m" 10^6, "1mb" 2^20, "1g" 10^9, "1gb" 2^30, any case), or
// with an IEC unit ("512MiB", "1GiB"), or as a plain number of bytes.
type Size int64

// sizeUnits follows Redis' memtoull (src/util.c), extended to terabytes
// the same way; the IEC units are never ambiguous.
var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
	{"kb", 1 << 10}, {"mb", 1 << 20}, {"gb", 1 << 30}, {"tb", 1 << 40},
	{"k", 1e3}, {"m", 1e6}, {"g", 1e9}, {"t", 1e12}, {"b", 1},
}

// ParseSize parses a byte count as Size describes it. A fraction is
// allowed ("1.5GiB"); the result is rounded down to a whole byte.
func ParseSize(s string) (Size, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	bad := fmt.Errorf("%q is not a size like 1gb (2^30 bytes), 1g (10^9), 512MiB or 1048576", s)
	if n, err := strconv.ParseInt(t, 10, 64); err == nil {
		if n < 0 {
			return 0, bad
		}
		if n > math.MaxInt64/mult {
			return 0, fmt.Errorf("%q is too large: at most %d bytes", s, int64(math.MaxInt64))
		}
		return Size(n * mult), nil
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, bad
	}
	v := f * float64(mult)
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("%q is too large: at most %d bytes", s, int64(math.MaxInt64))
	}
	return Size(v), nil
}

func (z *Size) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*z = v
	return nil
}

// String gives the byte count, and its IEC reading when it is large, so
// an error shows what a unit was taken to mean: "64000000 bytes (61.0 MiB)".
func (z Size) String() string {
	if z < 1<<10 {
		return fmt.Sprintf("%d bytes", int64(z))
	}
	f, i := float64(z), -1
	for f >= 1<<10 && i < 4 {
		f /= 1 << 10
		i++
	}
	return fmt.Sprintf("%d bytes (%.1f %ciB)", int64(z), f, "KMGTP"[i])
}

// MarshalYAML writes the exact IEC form when there is one, else bytes,
// so the effective configuration reads back to the same value.
func (z Size) MarshalYAML() (any, error) {
	for _, u := range []struct {
		unit string
		mult int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if z != 0 && int64(z)%u.mult == 0 {
			return fmt.Sprintf("%d%s", int64(z)/u.mult, u.unit), nil
		}
	}
	return int64(z), nil
}

func validatePprofListen(addr string) error {
	if addr == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("pprof_listen %q: want host:port: %w", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("pprof_listen %q: must be a loopback address, as profiles are served without authentication", addr)
	}
	return nil
}
