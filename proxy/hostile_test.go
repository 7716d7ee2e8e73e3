package proxy_test

import (
	"context"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// tinyRcvBuf dials with a 4 KiB receive buffer, so a replica that stops
// reading fills its socket after a few pushes.
func tinyRcvBuf() *net.Dialer {
	return &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4<<10)
		})
		if err != nil {
			return err
		}
		return serr
	}}
}

// Hostile replicas against the writer's own pushes: some stop reading
// with tiny receive buffers while acknowledging what they got (so only
// the lag policy can drop them), one resets its connection in the middle
// of the stream, one half-closes it, one reconnects in a loop. The master
// link keeps its pace, the honest replica ends with the master's digest,
// and the stalled ones are dropped by max_lag_bytes.
func TestHostileReplicasAgainstPushes(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.Replicas.MaxLagBytes = 16 << 20
	r := &relay{master: m, proxy: startProxy(t, cfg)}
	r.addReplica(t)
	r.waitInSync(t)
	addr := r.proxy.cfg.Listen

	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	var stalled []*fakeReplica
	for i := 0; i < 3; i++ {
		f := stallingReplica(t, addr)
		stalled = append(stalled, f)
		// Reads a little, then acknowledges what it read forever, so it
		// never looks silent.
		wg.Add(1)
		go func(f *fakeReplica) {
			defer wg.Done()
			got := f.offset
			buf := make([]byte, 64<<10)
			for ctx.Err() == nil {
				if got-f.offset < 256<<10 {
					f.conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
					n, _ := f.br.Read(buf)
					got += int64(n)
				}
				if f.ack(got) != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}(f)
	}
	for _, kind := range []string{"rst", "halfclose"} {
		f, err := dialFakeReplica(addr)
		if err != nil {
			t.Fatal(err)
		}
		defer f.conn.Close()
		if err := f.readRDB(); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func(kind string, f *fakeReplica) {
			defer wg.Done()
			f.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			io.CopyN(io.Discard, f.br, 1<<20) // in the middle of pushes
			tc := f.conn.(*net.TCPConn)
			if kind == "rst" {
				tc.SetLinger(0)
				tc.Close()
				return
			}
			tc.CloseWrite()
		}(kind, f)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			f, err := dialFakeReplica(addr)
			if err != nil {
				return
			}
			if f.readRDB() == nil {
				f.conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				io.CopyN(io.Discard, f.br, 256<<10)
			}
			f.conn.Close()
		}
	}()

	writeBig(t, m, r.proxy, 48<<20, nil)
	waitProxyWithin(t, m, r.proxy, 0)
	r.waitInSync(t)
	redisproc.Eventually(t, 30*time.Second, "the stalled replicas to be dropped", func() (bool, string) {
		log := tail(r.proxy.logPath, 400)
		n := strings.Count(log, "exceeds replicas.max_lag_bytes")
		return n >= len(stalled), strconv.Itoa(n)
	})
	expectInt(t, "master sync_partial_ok (the proxy never reconnected)", m.InfoInt("stats", "sync_partial_ok"), 0)
	expectInt(t, "master sync_full", m.InfoInt("stats", "sync_full"), 1)
}

// Replicas that stop reading one after another, each right after being
// fed from memory, each while a different append is the last: the proxy's
// memory does not grow with their number (their lag lives on disk).
func TestStalledReplicasHoldNoMemory(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	tp := newProcessProxy(t, cfg)
	redisproc.Eventually(t, syncTimeout, "the proxy's first sync", func() (bool, string) {
		st := tp.info("replication")["master_link_status"]
		return st == "up", st
	})
	const n = 32
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	halt := make([]chan struct{}, n)
	for i := range halt {
		f := stallingReplica(t, tp.cfg.Listen)
		halt[i] = make(chan struct{})
		wg.Add(1)
		go func(f *fakeReplica, halt chan struct{}) {
			defer wg.Done()
			buf := make([]byte, 256<<10)
			for {
				select {
				case <-halt:
					<-ctx.Done()
					return
				case <-ctx.Done():
					return
				default:
				}
				f.conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
				f.br.Read(buf)
			}
		}(f, halt[i])
	}
	value := strings.Repeat("v", 2<<20)
	c := m.Client()
	set := func(i int) {
		if err := c.Set(t.Context(), "k"+strconv.Itoa(i%4), value, 0).Err(); err != nil {
			t.Fatal(err)
		}
		waitProxyWithin(t, m, tp, 0)
	}
	for i := 0; i < 8; i++ {
		set(i) // warm up the buffers before the baseline
	}
	time.Sleep(500 * time.Millisecond)
	base := rssKiB(t, tp.cmd.Process.Pid)
	for i := range halt {
		close(halt[i])
		time.Sleep(50 * time.Millisecond) // it stops between appends
		set(i)
	}
	time.Sleep(500 * time.Millisecond)
	now := rssKiB(t, tp.cmd.Process.Pid)
	t.Logf("proxy RSS %d KiB before, %d KiB with %d replicas stopped", base, now, n)
	if now-base > 4<<10 {
		t.Fatalf("proxy RSS grew by %d KiB with %d replicas stopped on different appends", now-base, n)
	}
}

// stallingReplica is a fake replica with a tiny receive buffer, past its
// full sync, with no deadline: the test decides when it stops reading.
func stallingReplica(t *testing.T, addr string) *fakeReplica {
	t.Helper()
	f, err := dialFakeReplicaVia(tinyRcvBuf(), addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.conn.Close() })
	if err := f.readRDB(); err != nil {
		t.Fatal(err)
	}
	f.conn.SetDeadline(time.Time{})
	return f
}
