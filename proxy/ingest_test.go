package proxy_test

import (
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/proxy"
)

// The repl-timeout measures the master's silence, not the proxy's own
// stalls: while an append waits on the disk (here a directory fsync at a
// segment roll that takes longer than repl-timeout) the master goes on
// sending, and the bytes wait in the socket. The link must read them and
// go on, as a Redis replica does after it was blocked, instead of calling
// the master silent and reconnecting.
func TestWriterStallIsNotMasterSilence(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.Master.ReplTimeout = proxy.Duration(2 * time.Second)
	logDirs := filepath.Join(cfg.DataDir, "log", "*")
	var stall atomic.Bool
	var stalled atomic.Int64
	proxy.SetBacklogSync(&cfg, func(f *os.File) error {
		if ok, _ := filepath.Match(logDirs, f.Name()); ok && stall.CompareAndSwap(true, false) {
			time.Sleep(3 * time.Second)
			stalled.Add(1)
		}
		return f.Sync()
	})
	r := &relay{master: m, proxy: startProxy(t, cfg)}
	r.addReplica(t)
	stopLoad := runLoad(t, m, 31)
	waitOps(t, m, 500)
	stall.Store(true)
	redisproc.Eventually(t, syncTimeout, "a stalled segment roll", func() (bool, string) {
		return stalled.Load() == 1, ""
	})
	waitOps(t, m, 500)
	stopLoad()
	r.waitInSync(t)
	for _, line := range logLines(t, r.proxy.logPath) {
		for _, v := range line {
			if s, _ := v.(string); strings.Contains(s, "no data from master") {
				t.Fatalf("the proxy's own stall was taken for a silent master: %v", line)
			}
		}
	}
	expectInt(t, "master sync_partial_ok (the link never reconnected)", m.InfoInt("stats", "sync_partial_ok"), 0)
}

// The other side of the same clock: a master that sends nothing at all
// (stopped, so not even its pings) is called silent after repl-timeout.
func TestSilentMasterTimesOut(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.Master.ReplTimeout = proxy.Duration(time.Second)
	r := &relay{master: m, proxy: startProxy(t, cfg)}
	r.addReplica(t)
	r.waitInSync(t)
	m.Pause()
	defer m.Resume()
	redisproc.Eventually(t, 20*time.Second, "the link to call the stopped master silent", func() (bool, string) {
		for _, line := range logLines(t, r.proxy.logPath) {
			if s, _ := line["reason"].(string); strings.Contains(s, "no data from master for 1s") {
				return true, ""
			}
		}
		return false, ""
	})
}
