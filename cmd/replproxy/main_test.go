package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/internal/rdbfixture"
)

func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	app := newApp()
	var out bytes.Buffer
	app.Writer, app.ErrWriter = &out, &out
	err := app.Run(append([]string{"replproxy"}, args...))
	return out.String(), err
}

func TestVersionAndHelp(t *testing.T) {
	if out, err := runCLI(t, "version"); err != nil || !strings.HasPrefix(out, "replproxy ") {
		t.Fatalf("version: %q %v", out, err)
	}
	for _, cmd := range []string{"run", "check-config", "verify", "status", "inspect", "probe"} {
		if out, err := runCLI(t, cmd, "--help"); err != nil || !strings.Contains(out, "USAGE") {
			t.Fatalf("%s --help: %q %v", cmd, out, err)
		}
	}
}

func TestCheckConfigNamesTheProblem(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(path, []byte("master:\n  addr: 127.0.0.1:6379\nbacklog:\n  fsync: sometimes\n"), 0o644)
	if _, err := runCLI(t, "check-config", "--config", path); err == nil || !strings.Contains(err.Error(), `fsync policy "sometimes"`) {
		t.Fatalf("check-config on a bad file: %v", err)
	}
	if out, err := runCLI(t, "check-config", "--config", "../../config.yaml"); err != nil || !strings.HasPrefix(out, "ok:") {
		t.Fatalf("check-config on the example: %q %v", out, err)
	}
	if _, err := runCLI(t, "check-config", "--master", "nohostport"); err == nil || !strings.Contains(err.Error(), "want host:port") {
		t.Fatalf("check-config with a bad flag: %v", err)
	}
}

// verify reads a data dir offline and names a damaged segment.
func TestVerifyFindsDamage(t *testing.T) {
	dir := t.TempDir()
	s, err := backlog.Open(dir, backlog.Options{
		Log:    backlog.LogOptions{SegmentBytes: 1 << 20, MaxBytes: 1 << 30, Fsync: backlog.FsyncNo},
		Logger: zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	w, _ := s.NewSnapshot()
	w.Write([]byte("REDIS0010"))
	if err := s.Reset(backlog.RandomReplID(), 0, w); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		s.Append(bytes.Repeat([]byte{byte(i)}, 1000))
	}
	s.Close()
	if out, err := runCLI(t, "verify", "--data-dir", dir); err != nil || !strings.Contains(out, "offsets [1, 10001)") || !strings.HasSuffix(out, "ok\n") {
		t.Fatalf("verify on a good dir: %q %v", out, err)
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "log", "*", "*.seg"))
	f, _ := os.OpenFile(segs[0], os.O_RDWR, 0)
	f.WriteAt([]byte{0xff}, 4321)
	f.Close()
	out, err := runCLI(t, "verify", "--data-dir", dir)
	if err == nil || !strings.Contains(out, "PROBLEM: "+segs[0]+": checksum mismatch") {
		t.Fatalf("verify on a damaged dir: %q %v", out, err)
	}
}

// Issue 8, point 5: verify reports a flipped bit in the snapshot (CRC-64)
// and a flipped byte in a sealed segment, and says truthfully what the
// proxy does about each.
func TestVerifyReportsSnapshotAndSegmentDamage(t *testing.T) {
	dir := t.TempDir()
	s, err := backlog.Open(dir, backlog.Options{
		Log:    backlog.LogOptions{SegmentBytes: 1000, MaxBytes: 1 << 30, Fsync: backlog.FsyncEverySec},
		Logger: zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	w, _ := s.NewSnapshot()
	w.Write([]byte("REDIS0010 some snapshot body"))
	if err := s.Reset(backlog.RandomReplID(), 0, w); err != nil {
		t.Fatal(err)
	}
	s.Append(bytes.Repeat([]byte("v"), 3500))
	snap := filepath.Join(dir, "snapshot", s.State().Snapshot.File)
	s.Close()
	if out, err := runCLI(t, "verify", "--data-dir", dir); err != nil || !strings.HasSuffix(out, "ok\n") {
		t.Fatalf("verify on a good dir: %q %v", out, err)
	}
	flip := func(path string, at int64) {
		f, _ := os.OpenFile(path, os.O_RDWR, 0)
		defer f.Close()
		b := []byte{0}
		f.ReadAt(b, at)
		f.WriteAt([]byte{b[0] ^ 0x10}, at)
	}
	flip(snap, 15)
	seg := filepath.Join(dir, "log", "1", "00000000000000001001.seg")
	flip(seg, 500)
	out, err := runCLI(t, "verify", "--data-dir", dir)
	if err == nil {
		t.Fatalf("verify passed a damaged dir: %q", out)
	}
	for _, want := range []string{
		"PROBLEM: snapshot " + snap + ": CRC-64 ",
		"then: at start, the proxy moves the snapshot and its backlog into damaged/ and full-syncs from its master",
		"PROBLEM: " + seg + ": checksum mismatch in bytes 0..1000",
		"then: this segment was fsynced whole, so recovery trusts its sizes; the proxy finds the mismatch before sending these bytes",
		"resumes with PSYNC from offset 1001",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("verify output lacks %q:\n%s", want, out)
		}
	}
}

// Issue 10: a password given as a flag is visible in ps; the proxy warns.
// The same password from the environment or a file gets no warning.
func TestPasswordFlagWarns(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "pass")
	os.WriteFile(secret, []byte("from-a-file\n"), 0o600)
	conf := filepath.Join(dir, "c.yaml")
	os.WriteFile(conf, []byte("master:\n  addr: 127.0.0.1:6379\nrequirepass_file: "+secret+"\n"), 0o600)
	out, err := runCLI(t, "check-config", "--master", "127.0.0.1:6379", "--requirepass", "on-the-command-line")
	if err != nil || !strings.Contains(out, "--requirepass on the command line is visible to every local user") {
		t.Fatalf("flag: %q %v", out, err)
	}
	t.Setenv("REPLPROXY_REQUIREPASS", "from-the-environment")
	out, err = runCLI(t, "check-config", "--master", "127.0.0.1:6379")
	if err != nil || strings.Contains(out, "warning") {
		t.Fatalf("environment: %q %v", out, err)
	}
	// The environment and a password_file at once: which one wins is no guess.
	if _, err := runCLI(t, "check-config", "--config", conf); err == nil || !strings.Contains(err.Error(), "set both") {
		t.Fatalf("environment and file: %v", err)
	}
	os.Unsetenv("REPLPROXY_REQUIREPASS")
	if out, err := runCLI(t, "check-config", "--config", conf); err != nil || strings.Contains(out, "warning") {
		t.Fatalf("file: %q %v", out, err)
	}
}

// One process, several cluster shards: check-config lists each pipeline
// with its own port and data subdirectory.
func TestCheckConfigListsPipelines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cluster.yaml")
	body := "data_dir: /var/lib/replproxy\nmaster:\n  cluster:\n    seeds: [10.0.0.1:6379]\npipelines:\n" +
		"  - {name: shard-a, listen: '0.0.0.0:6380', shard: " + strings.Repeat("a", 40) + "}\n" +
		"  - {name: shard-b, listen: '0.0.0.0:6381', shard: " + strings.Repeat("b", 40) + "}\n"
	os.WriteFile(path, []byte(body), 0o644)
	out, err := runCLI(t, "check-config", "--config", path)
	if err != nil || !strings.Contains(out, "pipeline shard-b: listen 0.0.0.0:6381, shard "+strings.Repeat("b", 40)+", data_dir /var/lib/replproxy/shard-b") {
		t.Fatalf("check-config with pipelines: %q %v", out, err)
	}
}

// The Kubernetes recipe for N shards writes a config.yaml per shard that
// the proxy accepts, and refuses a slot number where a node ID belongs.
func TestKubernetesShardRecipe(t *testing.T) {
	out := t.TempDir()
	id := strings.Repeat("c", 40)
	gen := exec.Command("sh", "../../deploy/kubernetes/cluster/generate.sh", out, "n0:6379,n1:6379", "shard-a="+id)
	if b, err := gen.CombinedOutput(); err != nil {
		t.Fatalf("generate.sh: %v\n%s", err, b)
	}
	raw, err := os.ReadFile(filepath.Join(out, "shard-a", "config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Data map[string]string `yaml:"data"`
	}
	if err := yaml.Unmarshal(raw, &cm); err != nil {
		t.Fatal(err)
	}
	// The shard's config replaces the base one whole: it must keep the
	// users, or protected mode refuses every far-side replica.
	secrets := t.TempDir()
	for _, k := range []string{"replica-password", "admin-password"} {
		os.WriteFile(filepath.Join(secrets, k), []byte(k+"-value\n"), 0o600)
	}
	body := strings.ReplaceAll(cm.Data["config.yaml"], "/run/secrets/replproxy", secrets)
	path := filepath.Join(out, "proxy.yaml")
	os.WriteFile(path, []byte(body), 0o644)
	if _, err := runCLI(t, "check-config", "--config", path); err != nil {
		t.Fatalf("the generated config: %v\n%s", err, body)
	}
	for _, want := range []string{"role: replica", "role: admin", "protected_mode: yes"} {
		if !strings.Contains(body, want) {
			t.Fatalf("the generated config lacks %q, so protected mode shuts the far side out:\n%s", want, body)
		}
	}
	if b, err := exec.Command("sh", "../../deploy/kubernetes/cluster/generate.sh", out, "n0:6379", "shard-b=5460").CombinedOutput(); err == nil || !strings.Contains(string(b), "not a 40-hex-digit node ID") {
		t.Fatalf("generate.sh with a slot number: %v %s", err, b)
	}
}

// inspect shows what the proxy reads of any RDB, and counts keys where the
// pinned parser can; a Redis 8.6 RDB is shown, not refused.
func TestInspect(t *testing.T) {
	dir := t.TempDir()
	newer := filepath.Join(dir, "newer.rdb")
	os.WriteFile(newer, rdbfixture.Build(rdbfixture.Spec{Header: "REDIS0013", RedisVer: "8.6.0", KeyMeta: true, Key: "k", Value: "v"}), 0o644)
	out, err := runCLI(t, "inspect", newer)
	if err != nil || !strings.Contains(out, "header REDIS0013 (known format: true)") || !strings.Contains(out, "producer Redis 8.6.0") ||
		!strings.Contains(out, "crc64 verified: true") || !strings.Contains(out, "keys: not counted, hdt3213/rdb cannot parse this RDB") {
		t.Fatalf("inspect REDIS0013: %v\n%s", err, out)
	}
	older := filepath.Join(dir, "older.rdb")
	os.WriteFile(older, rdbfixture.Build(rdbfixture.Spec{Header: "REDIS0011", RedisVer: "7.2.6", Key: "k", Value: "v"}), 0o644)
	if out, err := runCLI(t, "inspect", older); err != nil || !strings.Contains(out, "db0 keys=1") {
		t.Fatalf("inspect REDIS0011: %v\n%s", err, out)
	}
	if _, err := runCLI(t, "inspect"); err == nil {
		t.Fatal("inspect with no file: no error")
	}

	// --data-dir finds the stored snapshot.
	data := filepath.Join(dir, "data")
	st, err := backlog.Open(data, backlog.Options{
		Log:    backlog.LogOptions{SegmentBytes: 1 << 20, MaxBytes: 1 << 30, Fsync: backlog.FsyncNo},
		Logger: zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	w, _ := st.NewSnapshot()
	w.Write(rdbfixture.Build(rdbfixture.Spec{Header: "VALKEY081", ValkeyVer: "9.2.0"}))
	if err := st.Reset(backlog.RandomReplID(), 0, w); err != nil {
		t.Fatal(err)
	}
	st.Close()
	if out, err := runCLI(t, "inspect", "--data-dir", data); err != nil || !strings.Contains(out, "RDB VALKEY081 (version 81), produced by valkey 9.2.0") {
		t.Fatalf("inspect --data-dir: %v\n%s", err, out)
	}
}

// Issue 21, point 3: check-config warns when the data dir's filesystem is
// smaller than what the configuration may put on it, naming each term.
func TestCheckConfigWarnsOfASmallDisk(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "c.yaml")
	body := "data_dir: " + filepath.Join(dir, "data") + "\nmaster:\n  addr: 127.0.0.1:6379\nbacklog:\n  max_bytes: 1000000TiB\n"
	os.WriteFile(conf, []byte(body), 0o600)
	out, err := runCLI(t, "check-config", "--config", conf)
	if err != nil || !strings.Contains(out, "warning: the filesystem of data dir "+filepath.Join(dir, "data")) ||
		!strings.Contains(out, "backlog.max_bytes") || !strings.Contains(out, "damaged.max_bytes") || !strings.Contains(out, "two RDBs") {
		t.Fatalf("check-config with a backlog larger than the disk: %q %v", out, err)
	}
	os.WriteFile(conf, []byte("data_dir: "+filepath.Join(dir, "data")+"\nmaster:\n  addr: 127.0.0.1:6379\nbacklog:\n  max_bytes: 64MiB\n"), 0o600)
	if out, err := runCLI(t, "check-config", "--config", conf); err != nil || strings.Contains(out, "warning") {
		t.Fatalf("check-config with a small backlog: %q %v", out, err)
	}
}
