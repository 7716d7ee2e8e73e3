package proxy_test

import (
	"context"
	"io"
	"math"
	"net"
	"net/http"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/fsfreeze"
	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/proxy"
)

// The bounds the issue sets for a process whose disk stops answering.
const (
	frozenFor     = 3 * time.Second
	maxAnswer     = 100 * time.Millisecond
	maxPause      = 50 * time.Millisecond
	frozenReadyAt = time.Second // health.ready_max_lag in the test
	// noise: how many times what the machine's load alone costs (measured
	// with the disk answering) a bound may grow to.
	noise = 4
)

// Issue 20: the data dir's filesystem freezes for 3 s under write load
// with a caught-up replica. The process keeps answering (PING, INFO,
// /healthz, /metrics, /readyz within 100 ms), no goroutine that does not
// wait on the disk pauses over 50 ms (a 1 ms heartbeat in this process,
// which runs the proxy, and the runtime's own stop-the-world pauses, with
// a GC forced during the stall: a raw pwrite asleep in the kernel held
// the GC's stop-the-world until the thaw), the replica gets what the
// backlog held before the freeze, /readyz says why it is not ready while
// the append is stuck, and after the thaw the link goes on without a full
// sync and the digests are equal.
//
// On a 2-core machine shared with other work, and under -race, the
// heartbeat and the answers are slow at times with the disk answering
// too; the same questions asked for 3 s before the freeze measure that,
// and a bound below four times the slowest of them is not held against
// the freeze (the stall this test was written for lasted seconds). The
// same goes for the runtime's own count of its stop-the-world pauses, with
// a GC forced in the 3 s before the freeze too: a thread that the kernel
// does not run for a while delays a stop-the-world as well.
func TestFrozenDiskKeepsServing(t *testing.T) {
	mnt := fsfreeze.Mount(t)
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.DataDir = filepath.Join(mnt, "data")
	cfg.MetricsListen = "127.0.0.1:" + strconv.Itoa(redisproc.FreePort(t))
	cfg.Health.ReadyMaxLag = proxy.Duration(frozenReadyAt)
	p := startProxy(t, cfg)
	rep := redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(p.port))
	stopLoad := runLoad(t, m, 20)
	waitOps(t, m, 500)
	waitCaughtUp(t, m, rep)

	hb := startHeartbeat(t)
	probes := newProber(t, p, cfg.MetricsListen)
	hb.reset()
	baseSTW, forced := readSTW(), false
	for end := time.Now().Add(frozenFor); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		probes.round()
		if time.Until(end) < frozenFor/2 && !forced {
			runtime.GC()
			forced = true
		}
	}
	basePause, baseAnswers, baseSTWMax := hb.max(), probes.slowest(), baseSTW.maxSince()
	t.Logf("disk answering: longest heartbeat pause %s, longest stop-the-world %s; slowest answers %v", basePause, baseSTWMax, baseAnswers)

	fr := fsfreeze.Freeze(t, mnt, frozenFor)
	hb.reset()
	probes.reset()
	stw := readSTW()
	// An append whose writes the freeze waited for may still be moving
	// the end.
	time.Sleep(200 * time.Millisecond)
	held := p.infoInt("replication", "master_repl_offset")
	gcDone := make(chan time.Duration, 1)
	go func() {
		time.Sleep(300 * time.Millisecond) // the writer is asleep in the disk by now
		start := time.Now()
		runtime.GC()
		gcDone <- time.Since(start)
	}()
	sawUnready, gotHeld, endFrozen := "", int64(-1), int64(-1)
	for time.Since(fr.At) < frozenFor-300*time.Millisecond {
		why := probes.round()
		if strings.Contains(why, "waited on the disk") {
			sawUnready = why
		}
		gotHeld = max(gotHeld, rep.InfoInt("replication", "slave_repl_offset"))
		if end := p.infoInt("replication", "master_repl_offset"); !fr.Thawed() {
			endFrozen = end
		}
		time.Sleep(100 * time.Millisecond)
	}
	pause, answers, stwMax := hb.max(), probes.slowest(), stw.maxSince()
	gcTook := <-gcDone
	fr.Wait(t)
	t.Logf("disk frozen: longest heartbeat pause %s, longest stop-the-world %s, forced GC took %s; slowest answers %v; backlog end %d, replica reached %d",
		pause, stwMax, gcTook, answers, held, gotHeld)

	if endFrozen != held {
		t.Fatalf("the backlog moved from %d to %d while its disk was frozen: the freeze did not hold", held, endFrozen)
	}
	if bound := max(maxPause, noise*baseSTWMax); stwMax > bound {
		t.Errorf("the runtime stopped the world for %s during the freeze (at most %s; %s with the disk answering)", stwMax, bound, baseSTWMax)
	}
	if bound := max(maxPause, noise*basePause); pause > bound {
		t.Errorf("a goroutine that does not wait on the disk paused %s during the freeze (at most %s; %s with the disk answering)", pause, bound, basePause)
	}
	for what, d := range answers {
		if bound := max(maxAnswer, noise*baseAnswers[what]); d > bound {
			t.Errorf("%s took %s to answer during the freeze (at most %s; %s with the disk answering)", what, d, bound, baseAnswers[what])
		}
	}
	if gotHeld < held {
		t.Errorf("during the freeze the replica reached %d of the %d the backlog held", gotHeld, held)
	}
	if sawUnready == "" {
		t.Errorf("/readyz never said the append waits on the disk during a %s freeze (ready_max_lag %s)", frozenFor, frozenReadyAt)
	}
	if t.Failed() {
		return
	}

	waitOps(t, m, 500) // the stream flows again
	stopLoad()
	redisproc.WaitInSync(t, syncTimeout, m, rep)
	expectInt(t, "master sync_full (the link went on without a full sync)", m.InfoInt("stats", "sync_full"), 1)
	expectInt(t, "proxy sync_full (the replica went on without a full sync)", p.infoInt("stats", "sync_full"), 1)
	redisproc.Eventually(t, 10*time.Second, "/readyz ready after the thaw", func() (bool, string) {
		code, body := httpGet(cfg.MetricsListen, "/readyz")
		return code == http.StatusOK, strconv.Itoa(code) + " " + body
	})
}

// stwPauses reads the runtime's histogram of stop-the-world pauses.
type stwPauses struct{ start *metrics.Float64Histogram }

const stwMetric = "/sched/pauses/total/gc:seconds"

func readSTW() stwPauses { return stwPauses{start: stwHistogram()} }

func stwHistogram() *metrics.Float64Histogram {
	s := []metrics.Sample{{Name: stwMetric}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64Histogram {
		return nil
	}
	return s[0].Value.Float64Histogram()
}

// maxSince is the upper bound of the highest bucket that counted a pause
// since start (0: none, or the runtime does not have the metric).
func (p stwPauses) maxSince() time.Duration {
	now := stwHistogram()
	if p.start == nil || now == nil {
		return 0
	}
	for i := len(now.Counts) - 1; i >= 0; i-- {
		if now.Counts[i] > p.start.Counts[i] {
			upper := now.Buckets[i+1]
			if math.IsInf(upper, 1) {
				upper = now.Buckets[i]
			}
			return time.Duration(upper * float64(time.Second))
		}
	}
	return 0
}

// heartbeat ticks every millisecond and keeps its longest gap: in the
// process that runs the proxy, a gap is a pause of every goroutine.
type heartbeat struct {
	longest atomic.Int64
	zero    atomic.Bool
}

func startHeartbeat(t *testing.T) *heartbeat {
	hb := &heartbeat{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		last := time.Now()
		for ctx.Err() == nil {
			time.Sleep(time.Millisecond)
			now := time.Now()
			gap := int64(now.Sub(last))
			if hb.zero.Swap(false) {
				hb.longest.Store(0)
			} else if gap > hb.longest.Load() {
				hb.longest.Store(gap)
			}
			last = now
		}
	}()
	return hb
}

func (hb *heartbeat) reset()             { hb.zero.Store(true) }
func (hb *heartbeat) max() time.Duration { return time.Duration(hb.longest.Load()) }

// prober asks the proxy what an operator and a load balancer ask, and
// keeps the slowest answer of each.
type prober struct {
	t       *testing.T
	conn    net.Conn
	metrics string
	http    *http.Client
	mu      sync.Mutex
	worst   map[string]time.Duration
}

func newProber(t *testing.T, p *testProxy, metrics string) *prober {
	c, err := p.dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	pr := &prober{t: t, conn: c, metrics: metrics, http: &http.Client{Timeout: 10 * time.Second}, worst: map[string]time.Duration{}}
	pr.round() // connections made, so a round times answers only
	return pr
}

func (pr *prober) reset() {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.worst = map[string]time.Duration{}
}

func (pr *prober) note(what string, start time.Time) {
	d := time.Since(start)
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.worst[what] = max(pr.worst[what], d)
}

// round asks each question once and returns /readyz's answer.
func (pr *prober) round() string {
	for _, cmd := range []string{"PING", "INFO"} {
		start := time.Now()
		if _, err := roundTrip(pr.conn, cmd); err != nil {
			pr.t.Errorf("%s: %v", cmd, err)
		}
		pr.note(cmd, start)
	}
	readyz := ""
	for _, path := range []string{"/healthz", "/metrics", "/readyz"} {
		start := time.Now()
		res, err := pr.http.Get("http://" + pr.metrics + path)
		if err != nil {
			pr.t.Errorf("%s: %v", path, err)
			continue
		}
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		pr.note(path, start)
		if err != nil {
			pr.t.Errorf("%s: %v", path, err)
		}
		if path == "/readyz" {
			readyz = strconv.Itoa(res.StatusCode) + " " + string(body)
		}
	}
	return readyz
}

func (pr *prober) slowest() map[string]time.Duration {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	out := map[string]time.Duration{}
	for k, v := range pr.worst {
		out[k] = v
	}
	return out
}
