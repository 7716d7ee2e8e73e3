package proxy_test

import (
	"bufio"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// The metrics listener's cap must not let a stranger shut out health
// probes: metrics_max_connections silent connections (reopened every few
// seconds, they would hold every slot for good) made each new connection
// be closed at once, so a kubelet's /healthz failed and the pod was
// restarted, even with metrics credentials set. A new connection now
// takes the slot of the one waiting longest for a request.
func TestSilentConnectionsDoNotShutOutHealthProbes(t *testing.T) {
	t.Parallel()
	const slots = 4
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.MetricsListen = "127.0.0.1:" + strconv.Itoa(redisproc.FreePort(t))
	cfg.MetricsMaxConnections = slots
	tp := newProcessProxy(t, cfg)
	_ = tp
	probe := func(what string) {
		t.Helper()
		c, err := net.DialTimeout("tcp", cfg.MetricsListen, 5*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(4 * time.Second)) // under the 5 s a silent connection may wait for its header
		c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: replproxy\r\nConnection: close\r\n\r\n"))
		status, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || !strings.HasPrefix(status, "HTTP/1.1 200") {
			t.Fatalf("%s: %q %v", what, status, err)
		}
	}
	probe("the first probe")
	for i := 0; i < slots; i++ {
		c, err := net.DialTimeout("tcp", cfg.MetricsListen, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		time.Sleep(50 * time.Millisecond) // accepted in order: the oldest goes first
	}
	for i := 0; i < 3; i++ {
		probe("a probe beside " + strconv.Itoa(slots) + " silent connections")
	}
}
