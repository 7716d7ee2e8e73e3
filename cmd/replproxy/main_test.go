package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

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
	for _, cmd := range []string{"run", "check-config", "verify"} {
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
	if out, err := runCLI(t, "inspect", "--data-dir", data); err != nil || !strings.Contains(out, "producer Valkey 9.2.0") {
		t.Fatalf("inspect --data-dir: %v\n%s", err, out)
	}
}
