package proxy_test

import (
	"fmt"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/proxy"
)

// A proxy parked in a failover that stalls (the chosen replica refuses
// SLAVEOF), with a sentinel shut down meanwhile (its event feed retries),
// stops at once when asked, and leaves no goroutine: the parked link, the
// event followers and the poll all end with the proxy's context.
func TestShutdownWhileParkedLeavesNoGoroutine(t *testing.T) {
	m := redisproc.Start(t, masterArgs...)
	redisproc.Start(t, append(masterArgs, "--rename-command", "SLAVEOF", "", "--replicaof", "127.0.0.1", strconv.Itoa(m.Port))...)
	var sentinels []string
	for i := 0; i < 3; i++ {
		sentinels = append(sentinels, startSentinel(t, m.Port, "sentinel failover-timeout mymaster 300000"))
	}
	for _, sn := range sentinels {
		redisproc.Eventually(t, failoverTimeout, "sentinels to know the replica and each other", func() (bool, string) {
			f := sentinelMaster(sn)
			return f["num-slaves"] == "1" && f["num-other-sentinels"] == "2", fmt.Sprint(f["num-slaves"], " ", f["num-other-sentinels"])
		})
	}
	before := runtime.NumGoroutine()
	cfg := proxyConfig(t, "")
	cfg.Master.Sentinel.Addrs = sentinels
	cfg.Master.Sentinel.Name = "mymaster"
	cfg.Master.Sentinel.Poll = proxy.Duration(200 * time.Millisecond)
	cfg.Master.Sentinel.FailoverPause = proxy.Duration(5 * time.Minute)
	p := startProxy(t, cfg)
	redisproc.Eventually(t, failoverTimeout, "the proxy to follow the master", func() (bool, string) {
		info := p.info("replication")
		return info["master_link_status"] == "up", info["master_link_status"]
	})
	for _, sn := range sentinels {
		redisproc.Eventually(t, failoverTimeout, "sentinels to know the proxy", func() (bool, string) {
			f := sentinelMaster(sn)
			return f["num-slaves"] == "2", f["num-slaves"]
		})
	}
	redisproc.Eventually(t, failoverTimeout, "sentinel to accept SENTINEL FAILOVER", func() (bool, string) {
		got, err := sentinelDo(sentinels[0], "SENTINEL", "FAILOVER", "mymaster")
		return got == "+OK", fmt.Sprint(got, err)
	})
	redisproc.Eventually(t, failoverTimeout, "the proxy to park", func() (bool, string) {
		st := p.info("stats")
		return st["failover_pauses"] == "1", st["failover_pauses"]
	})
	sentinelDo(sentinels[1], "SHUTDOWN") // its feed now fails and retries
	time.Sleep(1500 * time.Millisecond)
	if got := p.info("replication")["master_link_status"]; got != "down" {
		t.Fatalf("the parked proxy's link is %s", got)
	}
	p.stop()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines after shutdown, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}
