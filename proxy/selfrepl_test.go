package proxy_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// A REPLICAOF that names the proxy itself (an operator's slip, or an event
// naming the wrong node) is refused with a clear error, and the link stays
// on its master: following itself, the proxy would report its link up
// while nothing from the master reaches it.
func TestReplicaofItselfIsRefused(t *testing.T) {
	m := redisproc.Start(t)
	p := startProxy(t, proxyConfig(t, m.Addr()))
	redisproc.Eventually(t, 30*time.Second, "the proxy to follow the master", func() (bool, string) {
		info := p.info("replication")
		return info["master_link_status"] == "up", info["master_link_status"]
	})
	got, err := sentinelDo("127.0.0.1:"+strconv.Itoa(p.port), "REPLICAOF", "127.0.0.1", strconv.Itoa(p.port))
	if err == nil && !strings.HasPrefix(got, "-") {
		t.Errorf("REPLICAOF the proxy itself answered %q", got)
	}
	if _, err := m.Do("SET", "after", "1"); err != nil {
		t.Fatal(err)
	}
	redisproc.Eventually(t, 30*time.Second, "the proxy to store the master's write", func() (bool, string) {
		info := p.info("replication")
		want := strconv.FormatInt(m.InfoInt("replication", "master_repl_offset"), 10)
		return info["master_port"] == strconv.Itoa(m.Port) && info["master_repl_offset"] == want,
			info["master_port"] + " " + info["master_link_status"] + " " + info["master_repl_offset"] + " want " + want
	})
}
