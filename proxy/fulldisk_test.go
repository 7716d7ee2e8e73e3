package proxy_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// mountTmpfs mounts a tmpfs of size at a new directory named for this
// branch's test, unmounted at cleanup; it skips the test without root.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	mnt := filepath.Join(t.TempDir(), "i21b-full-disk")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("this test mounts a small tmpfs, which needs root: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
	return mnt
}

// fillUntilENOSPC writes a file at path until the filesystem is full.
func fillUntilENOSPC(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill %s: %v", path, err)
			}
			return
		}
	}
}

// masterSyncs is what the master counts of its replicas' PSYNCs.
func masterSyncs(m *redisproc.Server) (partial, full, refused int64) {
	st := m.Info("stats")
	n := func(k string) int64 { v, _ := strconv.ParseInt(st[k], 10, 64); return v }
	return n("sync_partial_ok"), n("sync_full"), n("sync_partial_err")
}

func countLog(t *testing.T, path, msg string) int {
	n := 0
	for _, line := range logLines(t, path) {
		if line["message"] == msg {
			n++
		}
	}
	return n
}

// Issue 21, point 3: a data dir on a small tmpfs, filled by another writer
// under load and kept full for 60 s. The link must not hammer the master
// (at most one PSYNC per 10 s, no full sync), must say why it waits, in
// /readyz, INFO and the log, and must resume partially soon after space
// returns, with equal digests. Before the fix the link re-PSYNCed about 5
// times a second, each time making the master resend the whole gap.
func TestFullDiskDoesNotHammerTheMaster(t *testing.T) {
	t.Parallel()
	mnt := mountTmpfs(t, "48m")
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.DataDir = filepath.Join(mnt, "data")
	cfg.Backlog.MaxBytes = 16 << 20
	cfg.MetricsListen = "127.0.0.1:" + strconv.Itoa(redisproc.FreePort(t))
	r := &relay{master: m, proxy: startProxy(t, cfg)}
	r.addReplica(t)
	r.waitInSync(t)
	// A light load: the master's 64 MB backlog and the proxy's 16 MiB keep
	// the whole gap, so the resume can be partial and nothing forks.
	load := redisproc.StartLoad(context.Background(), m, redisproc.LoadOptions{Seed: 21, Rate: 100, Workers: 1})
	stopLoad := func() {
		if _, err := load.Stop(); err != nil {
			t.Errorf("load: %v", err)
		}
	}
	defer stopLoad()
	redisproc.Eventually(t, syncTimeout, "the proxy to store some stream", func() (bool, string) {
		n := r.proxy.infoInt("replication", "master_repl_offset")
		return n > 200<<10, strconv.FormatInt(n, 10)
	})

	fillUntilENOSPC(t, filepath.Join(mnt, "filler"))
	partial0, full0, refused0 := masterSyncs(m)
	wire0 := r.proxy.infoInt("proxy", "upstream_bytes_received")
	offset0 := m.InfoInt("replication", "master_repl_offset")
	psyncs0 := countLog(t, r.proxy.logPath, "PSYNC answered")
	const fullFor = 60 * time.Second
	full := time.Now()
	time.Sleep(fullFor)

	partial1, full1, refused1 := masterSyncs(m)
	wire1 := r.proxy.infoInt("proxy", "upstream_bytes_received")
	offset1 := m.InfoInt("replication", "master_repl_offset")
	psyncs := countLog(t, r.proxy.logPath, "PSYNC answered") - psyncs0
	t.Logf("%s of full disk: master counted %d partial, %d full, %d refused PSYNCs; the proxy logged %d PSYNCs; "+
		"it read %d bytes from the master while the master's offset moved %d",
		fullFor, partial1-partial0, full1-full0, refused1-refused0, psyncs, wire1-wire0, offset1-offset0)
	if full1 != full0 {
		t.Errorf("the master made %d full syncs for the proxy while its disk was full", full1-full0)
	}
	if n := (partial1 - partial0) + (refused1 - refused0); n > int64(fullFor/(10*time.Second)) {
		t.Errorf("%d PSYNCs reached the master in %s of full disk, want at most one per 10 s", n, fullFor)
	}
	info := r.proxy.info("proxy")
	if info["upstream_waiting_for_space"] != "1" || !strings.Contains(info["upstream_waiting_for_space_reason"], "data dir full") {
		t.Errorf("INFO proxy does not say the link waits for space: %v", info)
	}
	ready, body := httpGet(cfg.MetricsListen, "/readyz")
	if ready != http.StatusServiceUnavailable || !strings.Contains(body, "data dir full") {
		t.Errorf("/readyz answered %d %q during the full disk", ready, body)
	}
	if !strings.Contains(tail(r.proxy.logPath, 400), "does not PSYNC until there is room") {
		t.Errorf("the log does not say why the link waits")
	}
	if t.Failed() {
		t.FailNow()
	}

	if err := os.Remove(filepath.Join(mnt, "filler")); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	redisproc.Eventually(t, syncTimeout, "the link to resume after space returned", func() (bool, string) {
		p, _, _ := masterSyncs(m)
		st := r.proxy.info("replication")["master_link_status"]
		return p > partial1 && st == "up", st
	})
	t.Logf("resumed %s after space returned (%s after the disk filled)", time.Since(freed).Round(100*time.Millisecond), time.Since(full).Round(time.Second))
	if took := time.Since(freed); took > 20*time.Second {
		t.Errorf("the link resumed %s after space returned", took)
	}
	stopLoad()
	stopLoad = func() {}
	r.waitInSync(t)
	_, fullEnd, _ := masterSyncs(m)
	expectInt(t, "master sync_full after space returned (the master still held the gap)", fullEnd, full0)
	if ready, body := httpGet(cfg.MetricsListen, "/readyz"); ready != http.StatusOK {
		t.Fatalf("/readyz answered %d %q after the resume", ready, body)
	}
}
