package proxy_test

import (
	"context"
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
		f, err := dialFakeReplicaVia(tinyRcvBuf(), tp.cfg.Listen)
		if err != nil {
			t.Fatal(err)
		}
		defer f.conn.Close()
		if err := f.readRDB(); err != nil {
			t.Fatal(err)
		}
		f.conn.SetDeadline(time.Time{})
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
