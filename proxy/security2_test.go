package proxy_test

import (
	"bytes"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/proxy"
)

// withheldCommand is the largest command an unauthenticated client may
// send (10 arguments of 16 KiB), without its last byte.
func withheldCommand() []byte {
	var b bytes.Buffer
	b.WriteString("*10\r\n")
	arg := bytes.Repeat([]byte("x"), 16<<10)
	for i := 0; i < 10; i++ {
		fmt.Fprintf(&b, "$%d\r\n", len(arg))
		b.Write(arg)
		b.WriteString("\r\n")
	}
	return b.Bytes()[:b.Len()-1]
}

// Issue 23, point 1: 1000 unauthenticated connections, each inside the
// per-connection limits and withholding its last byte, keep the proxy (a
// child process) under 64 MiB of peak RSS: past the budget of all their
// buffers, the largest are closed, and INFO stats counts them. A replica
// keeps streaming meanwhile.
func TestUnauthenticatedBuffersHaveATotalBudget(t *testing.T) {
	t.Parallel()
	const conns = 1000
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.RequirePass = "proxy-secret"
	cfg.AuthTimeout = proxy.Duration(time.Minute) // the budget, not the deadline, must close them
	tp := newProcessProxy(t, cfg)
	r := &relay{master: m, proxy: tp}
	r.replicas = append(r.replicas, redisproc.Start(t, "--masterauth", "proxy-secret", "--replicaof", "127.0.0.1", strconv.Itoa(tp.port)))
	stopLoad := runLoad(t, m, 231)
	r.waitInSyncWhileLoading(t)

	cmd := withheldCommand()
	open := make([]net.Conn, conns)
	t.Cleanup(func() {
		for _, c := range open {
			if c != nil {
				c.Close()
			}
		}
	})
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < conns; i += 8 {
				c, err := net.DialTimeout("tcp", cfg.Listen, 10*time.Second)
				if err != nil {
					t.Errorf("connection %d: %v", i, err)
					return
				}
				open[i] = c
				// An evicted client's write may fail: that is the point.
				c.SetWriteDeadline(time.Now().Add(30 * time.Second))
				c.Write(cmd)
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	// Let the proxy read what the sockets still hold.
	redisproc.Eventually(t, 30*time.Second, "evictions to stop", func() (bool, string) {
		a := tp.infoInt("stats", "evicted_clients")
		time.Sleep(time.Second)
		b := tp.infoInt("stats", "evicted_clients")
		return a > 0 && a == b, fmt.Sprintf("evicted_clients %d then %d", a, b)
	})
	peak := peakRSS(t, tp.cmd.Process.Pid)
	evicted := tp.infoInt("stats", "evicted_clients")
	t.Logf("%d withheld connections: peak RSS %d MiB, %d evicted", conns, peak>>20, evicted)
	if peak > 64<<20 {
		t.Fatalf("the proxy's peak RSS was %d MiB", peak>>20)
	}
	if evicted < conns/2 {
		t.Fatalf("evicted_clients %d: the budget should close most of %d clients of 160 KiB", evicted, conns)
	}
	// A client with a small buffer is never the largest: AUTH still works.
	w, err := dialWire(cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if got, err := w.do("AUTH", "proxy-secret"); got != "+OK" {
		t.Fatalf("AUTH beside the withheld clients: %q %v", got, err)
	}
	waitOps(t, m, 1000)
	stopLoad()
	r.waitInSync(t)
	expectInt(t, "proxy connected_slaves", tp.infoInt("replication", "connected_slaves"), 1)
}
