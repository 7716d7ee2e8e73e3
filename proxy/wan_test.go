package proxy_test

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/internal/wan"
	"github.com/replproxy/replproxy/proxy"
)

// The WAN settings, the same for both topologies: the link carries 2 MB/s
// each way; the burst writes 6 MB/s of JSON-like values for 6 s, three
// times the link. The master's replica output-buffer limit is Redis'
// default shape made smaller (8mb 4mb 10 instead of 256mb 64mb 60), so the
// direct replicas reach it within seconds, not minutes.
const (
	wanRateBits    = 16_000_000
	wanBurstRate   = 6 << 20
	wanBurstTime   = 6 * time.Second
	wanReplicas    = 2
	wanReplicaCOBL = "replica 8mb 4mb 10"
)

// setupWAN builds the link, or skips the test where the machine cannot.
// The namespaces go when the test ends, whatever happened.
func setupWAN(t *testing.T) *wan.Link {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := wan.Setup(ctx, "i25", wanRateBits)
	if errors.Is(err, wan.ErrUnavailable) {
		t.Skipf("skipped: %v (the WAN tests need root, ip, tc and the tbf qdisc)", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("remove the WAN link: %v", err)
		}
	})
	return l
}

func redisBinary(t *testing.T) redisproc.Binary {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal(err)
	}
	return redisproc.Binary{Path: path}
}

// nsProxy is a replproxy process in a namespace.
type nsProxy struct {
	ns, addr, logPath string
	cmd               *exec.Cmd
}

// startNsProxy runs the replproxy binary in namespace ns, listening on
// host, replicating from master. Protected mode is off: the namespaces
// hold only the test's processes, which reach it on host.
func startNsProxy(t *testing.T, ns, host, master string, tune func(*proxy.Config)) *nsProxy {
	t.Helper()
	cfg := proxyConfig(t, master)
	cfg.Listen = net.JoinHostPort(host, strconv.Itoa(redisproc.FreePort(t)))
	cfg.ProtectedMode = false
	cfg.Backlog.SegmentBytes = 4 << 20
	if tune != nil {
		tune(&cfg)
	}
	raw, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "proxy.yaml")
	if err := os.WriteFile(conf, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	p := &nsProxy{ns: ns, addr: cfg.Listen, logPath: filepath.Join(dir, "proxy.log")}
	f, err := os.Create(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	argv := append(wan.In(ns), binary, "run", "--config", conf, "--log-format", "json")
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		p.cmd.Wait()
		if t.Failed() {
			t.Logf("proxy %s in %s, log tail:\n%s", p.addr, ns, tail(p.logPath, 60))
		}
	})
	redisproc.Eventually(t, 20*time.Second, "proxy "+p.addr+" serving", func() (bool, string) {
		_, err := p.info("server")
		return err == nil, errString(err)
	})
	return p
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// info reads an INFO section with redis-cli from inside the namespace.
func (p *nsProxy) info(section string) (map[string]string, error) {
	host, port, _ := net.SplitHostPort(p.addr)
	argv := append(wan.In(p.ns), "redis-cli", "-h", host, "-p", port, "INFO", section)
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return nil, errors.New(strings.TrimSpace(string(out)))
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			m[k] = v
		}
	}
	if len(m) == 0 {
		return nil, errors.New("empty INFO: " + strings.TrimSpace(string(out)))
	}
	return m, nil
}

func (p *nsProxy) infoInt(t *testing.T, section, field string) int64 {
	t.Helper()
	m, err := p.info(section)
	if err != nil {
		t.Fatalf("INFO %s of %s: %v", section, p.addr, err)
	}
	v, err := strconv.ParseInt(m[field], 10, 64)
	if err != nil {
		t.Fatalf("INFO %s of %s: %s = %q", section, p.addr, field, m[field])
	}
	return v
}

// startWANMaster starts region A's master on the link's A end.
func startWANMaster(t *testing.T, l *wan.Link) *redisproc.Server {
	t.Helper()
	return redisproc.StartAt(t, redisBinary(t), redisproc.Place{Prefix: wan.In(l.NsA), Host: wan.AddrA},
		"--client-output-buffer-limit", wanReplicaCOBL)
}

// startWANReplicas starts region B's replicas of host:port.
func startWANReplicas(t *testing.T, l *wan.Link, host string, port int) []*redisproc.Server {
	t.Helper()
	var rs []*redisproc.Server
	for range wanReplicas {
		rs = append(rs, redisproc.StartAt(t, redisBinary(t), redisproc.Place{Prefix: wan.In(l.NsB), Host: wan.AddrB},
			"--replicaof", host, strconv.Itoa(port)))
	}
	return rs
}

// burst writes the WAN burst to m, through its unix socket.
func burst(t *testing.T, m *redisproc.Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*wanBurstTime+30*time.Second)
	defer cancel()
	n, err := wan.Burst(ctx, "unix", m.Socket(), wanBurstRate, wanBurstTime)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("burst: %.1f MB in %s", float64(n)/1e6, wanBurstTime)
}

// outputBufferKills counts the master's replicas it dropped for their
// output buffer, from its log (Redis 7.0 has no counter for it).
func outputBufferKills(t *testing.T, m *redisproc.Server) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(m.Dir, "redis.log"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "overcoming of output buffer limits")
}

// Issue 25: across a link thinner than the stream, replicas in region B
// straight from a master in region A hit its output-buffer limit (which
// shows the link really is thinner than the stream) and full-sync again;
// with a proxy in A, a compressed link, and a proxy in B, the same burst
// costs the master no full sync beyond the proxy's first, and every
// replica converges to the master's digest.
func TestWANChainAvoidsTheFullSyncLoop(t *testing.T) {
	l := setupWAN(t)

	t.Run("direct", func(t *testing.T) {
		m := startWANMaster(t, l)
		rs := startWANReplicas(t, l, wan.AddrA, m.Port)
		redisproc.WaitInSync(t, syncTimeout, m, rs...)
		before := m.InfoInt("stats", "sync_full")
		burst(t, m)
		kills := outputBufferKills(t, m)
		t.Logf("direct: %d replicas dropped for their output buffer, master sync_full %d -> %d",
			kills, before, m.InfoInt("stats", "sync_full"))
		if kills == 0 {
			t.Fatal("no direct replica hit the master's output-buffer limit: the link is not thinner than the stream")
		}
		for _, r := range rs {
			r.Kill() // their full-sync loop would only load the link
		}
	})

	t.Run("chain", func(t *testing.T) {
		m := startWANMaster(t, l)
		pa := startNsProxy(t, l.NsA, wan.AddrA, m.Addr(), nil)
		pb := startNsProxy(t, l.NsB, wan.AddrB, pa.addr, func(c *proxy.Config) { c.Master.Compression = "auto" })
		_, port, _ := net.SplitHostPort(pb.addr)
		pbPort, _ := strconv.Atoi(port)
		rs := startWANReplicas(t, l, wan.AddrB, pbPort)
		redisproc.WaitInSync(t, syncTimeout, m, rs...)
		tx0, err := l.TxBytes(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		burst(t, m)
		end := time.Now()
		redisproc.WaitInSync(t, syncTimeout, m, rs...)
		tx1, err := l.TxBytes(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		stream := pb.infoInt(t, "stats", "upstream_stream_bytes")
		t.Logf("chain: converged %.1fs after the burst; %.1f MB over the link, %.1f MB of stream into proxy B",
			time.Since(end).Seconds(), float64(tx1-tx0)/1e6, float64(stream)/1e6)
		expectInt(t, "chain: master sync_full (proxy A's first only)", m.InfoInt("stats", "sync_full"), 1)
		expectInt(t, "chain: replicas dropped for their output buffer", int64(outputBufferKills(t, m)), 0)
		expectInt(t, "chain: proxy B upstream_full_syncs", pb.infoInt(t, "stats", "upstream_full_syncs"), 1)
		if got := codecOf2(t, pa, wan.AddrB); got != "s2" {
			t.Fatalf("chain: the link's codec is %q, want s2", got)
		}
	})
}

// codecOf2 is the codec p's INFO replicas shows for its replica at ip.
func codecOf2(t *testing.T, p *nsProxy, ip string) string {
	t.Helper()
	m, err := p.info("replicas")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range m {
		if !strings.Contains(line, "ip="+ip+",") {
			continue
		}
		for _, f := range strings.Split(line, ",") {
			if v, ok := strings.CutPrefix(f, "codec="); ok {
				return v
			}
		}
		return ""
	}
	return "(not attached)"
}

// Issue 25, link flaps: the link goes down for 3 s, four times, under a
// steady write. Proxy B, which gives up on a silent master after 1 s,
// resumes each time with a partial resync from proxy A; the master never
// serves another full sync, the replicas in B never resync at all, and
// every digest ends equal. (The wan scenario runs ten 5 s flaps.)
func TestWANLinkFlapsResyncPartially(t *testing.T) {
	l := setupWAN(t)
	const flaps, down = 4, 3 * time.Second
	m := startWANMaster(t, l)
	pa := startNsProxy(t, l.NsA, wan.AddrA, m.Addr(), func(c *proxy.Config) {
		c.Replicas.Timeout = proxy.Duration(time.Second)
	})
	pb := startNsProxy(t, l.NsB, wan.AddrB, pa.addr, func(c *proxy.Config) {
		c.Master.Compression = "auto"
		c.Master.ReplTimeout = proxy.Duration(time.Second)
		c.Master.ConnectTimeout = proxy.Duration(time.Second)
	})
	_, port, _ := net.SplitHostPort(pb.addr)
	pbPort, _ := strconv.Atoi(port)
	rs := startWANReplicas(t, l, wan.AddrB, pbPort)
	redisproc.WaitInSync(t, syncTimeout, m, rs...)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	loadDone := make(chan error, 1)
	go func() {
		// A quarter of the link: the stream itself fits, the flaps do not.
		_, err := wan.Burst(ctx, "unix", m.Socket(), wanRateBits/8/4, time.Hour)
		loadDone <- err
	}()
	for i := range flaps {
		time.Sleep(down)
		if err := l.SetUp(ctx, false); err != nil {
			t.Fatal(err)
		}
		time.Sleep(down)
		if err := l.SetUp(ctx, true); err != nil {
			t.Fatal(err)
		}
		want := int64(i + 1)
		redisproc.Eventually(t, 30*time.Second, "proxy B to resume after flap "+strconv.Itoa(i+1), func() (bool, string) {
			got := pb.infoInt(t, "stats", "upstream_partial_syncs")
			return got >= want, "upstream_partial_syncs " + strconv.FormatInt(got, 10)
		})
	}
	time.Sleep(down)
	cancel()
	if err := <-loadDone; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	redisproc.WaitInSync(t, syncTimeout, m, rs...)
	expectInt(t, "master sync_full (proxy A's first only)", m.InfoInt("stats", "sync_full"), 1)
	expectInt(t, "proxy B upstream_full_syncs", pb.infoInt(t, "stats", "upstream_full_syncs"), 1)
	expectInt(t, "proxy A sync_full (proxy B's first only)", pa.infoInt(t, "stats", "sync_full"), 1)
	expectInt(t, "proxy B sync_full (its replicas' first only)", pb.infoInt(t, "stats", "sync_full"), wanReplicas)
	expectInt(t, "proxy B sync_partial_ok (its replicas never resync)", pb.infoInt(t, "stats", "sync_partial_ok"), 0)
	t.Logf("proxy B resumed partially %d times over %d flaps", pb.infoInt(t, "stats", "upstream_partial_syncs"), flaps)
}
