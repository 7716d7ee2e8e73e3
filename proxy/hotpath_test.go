package proxy_test

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/proxy"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// Issue 13, point 2: caught-up replicas are fed the bytes just read, from
// memory; one that falls behind (stopped) is served from its disk cursor
// and rejoins the memory path once it catches up. Writes go on throughout,
// so the handovers happen mid-stream; a gap or a repeated byte would show
// as a digest that differs (or a replica that breaks its link).
func TestLaggingReplicaHandsOverBetweenMemoryAndDisk(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	r := &relay{master: m, proxy: startProxy(t, proxyConfig(t, m.Addr()))}
	// One replica, so every byte the counters show is its own.
	lagging := r.addReplica(t)
	stopLoad := runLoad(t, m, 13)
	waitOps(t, m, 1000)
	waitCaughtUp(t, m, r.replicas...)
	memory := func() int64 { return r.proxy.infoInt("stats", "stream_bytes_from_memory") }
	disk := func() int64 { return r.proxy.infoInt("stats", "stream_bytes_from_disk") }
	if memory() <= 0 {
		t.Fatalf("caught-up replicas were not fed from memory (stream_bytes_from_memory %d)", memory())
	}

	lagging.Pause()
	// More than the socket buffers hold, so the stopped replica's sender
	// must leave the last append behind.
	writeBig(t, m, r.proxy, 24<<20, nil)
	waitOps(t, m, 500)
	disk0 := disk()
	lagging.Resume()
	waitCaughtUp(t, m, lagging)
	if disk() <= disk0 {
		t.Fatalf("the replica that fell behind was not served from disk (stream_bytes_from_disk %d, before resuming %d)", disk(), disk0)
	}
	// Back in step, it is fed from memory again.
	mem0 := memory()
	writeBig(t, m, r.proxy, 16<<20, nil)
	waitCaughtUp(t, m, lagging)
	t.Logf("from memory after catching up: %d bytes of 16 MiB", memory()-mem0)
	if got := memory() - mem0; got < 1<<20 {
		t.Fatalf("after catching up only %d bytes of 16 MiB went from memory: the replica did not rejoin the memory path", got)
	}
	stopLoad()
	r.waitInSync(t)
	expectInt(t, "proxy sync_partial_ok (nobody reconnected)", r.proxy.infoInt("stats", "sync_partial_ok"), 0)
	expectInt(t, "proxy sync_full", r.proxy.infoInt("stats", "sync_full"), 1)
}

// Issue 13: pprof_listen serves Go's profiles, for profiling the hot path
// in place; it is off unless set.
func TestPprofListenServesProfiles(t *testing.T) {
	t.Parallel()
	cfg := proxyConfig(t, "127.0.0.1:"+strconv.Itoa(redisproc.FreePort(t)))
	cfg.PprofListen = "127.0.0.1:" + strconv.Itoa(redisproc.FreePort(t))
	startProxy(t, cfg)
	var body string
	redisproc.Eventually(t, 10*time.Second, "the pprof index", func() (bool, string) {
		res, err := http.Get("http://" + cfg.PprofListen + "/debug/pprof/")
		if err != nil {
			return false, err.Error()
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		body = string(b)
		return res.StatusCode == http.StatusOK, res.Status
	})
	if !strings.Contains(body, "goroutine") {
		t.Fatalf("/debug/pprof/ lists no goroutine profile:\n%s", body)
	}
	if def := proxy.Defaults(); def.PprofListen != "" {
		t.Fatalf("pprof_listen defaults to %q, want off", def.PprofListen)
	}
}
