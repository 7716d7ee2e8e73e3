package proxy_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// Issue 25: between proxies the stream travels in the best codec both
// speak. P1 offers s2 and zstd; P1z offers only zstd, as a replproxy from
// before s2 did (it ignores the s2 capa). Downstream proxies ask:
//   - auto of P1: s2;
//   - zstd of P1: zstd (what a downstream from before s2 asks for);
//   - auto of P1z: zstd, the only codec both have;
//   - s2 of P1z: nothing they share, so a plain stream.
//
// Every replica ends with the master's digest, each hop's codec shows in
// its upstream's INFO replicas, a compressed hop carries fewer wire bytes
// than stream bytes and the plain one does not, and a restarted s2 hop
// resumes partially, compressed again.
func TestCodecsNegotiatedBetweenProxies(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	p1 := startProxy(t, proxyConfig(t, m.Addr()))
	oldCfg := proxyConfig(t, m.Addr())
	oldCfg.Replicas.Compression = []string{"zstd"}
	p1z := startProxy(t, oldCfg)

	type hop struct {
		name, upstream, asks, want string
		up                         *testProxy
		p                          *testProxy
		r                          *redisproc.Server
	}
	hops := []*hop{
		{name: "auto of P1", up: p1, asks: "auto", want: "s2"},
		{name: "zstd of P1", up: p1, asks: "zstd", want: "zstd"},
		{name: "auto of P1z", up: p1z, asks: "auto", want: "zstd"},
		{name: "s2 of P1z", up: p1z, asks: "s2", want: ""},
	}
	for _, h := range hops {
		cfg := proxyConfig(t, h.up.cfg.Listen)
		cfg.Master.Compression = h.asks
		h.p = startProxy(t, cfg)
		h.r = redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(h.p.port))
	}
	stopLoad := runLoad(t, m, 251)
	waitOps(t, m, 2000)
	// A restart of the s2 hop resumes partially, in s2 again.
	hops[0].p.stop()
	hops[0].p.start()
	waitOps(t, m, 2000)
	stopLoad()
	all := []*redisproc.Server{}
	for _, h := range hops {
		all = append(all, h.r)
	}
	redisproc.WaitInSync(t, syncTimeout, m, all...)

	for _, h := range hops {
		got := codecOf(h.up, h.p.port)
		if got != h.want {
			t.Errorf("%s (master.compression %s): codec %q, want %q", h.name, h.asks, got, h.want)
		}
		wire, raw := h.p.infoInt("stats", "upstream_wire_bytes"), h.p.infoInt("stats", "upstream_stream_bytes")
		t.Logf("%s: codec %q, %d wire bytes for %d stream bytes", h.name, got, wire, raw)
		// s2 packs no history across blocks, and under a slow test load a
		// block is a few small sends: it saves less than zstd here, but
		// a plain hop saves nothing (its wire bytes include the reply line).
		compressed := wire*100 < raw*97
		if compressed != (h.want != "") {
			t.Errorf("%s: %d wire bytes for %d stream bytes, compressed %t, want %t", h.name, wire, raw, compressed, h.want != "")
		}
	}
	expectInt(t, "restarted s2 hop upstream_full_syncs", hops[0].p.infoInt("stats", "upstream_full_syncs"), 0)
	if got := hops[0].p.infoInt("stats", "upstream_partial_syncs"); got < 1 {
		t.Fatalf("restarted s2 hop upstream_partial_syncs %d: it did not resume partially", got)
	}
	expectInt(t, "master sync_full", m.InfoInt("stats", "sync_full"), 2)
}

// codecOf is the codec the upstream's INFO replicas shows for the replica
// that announced port; "" for a plain stream.
func codecOf(up *testProxy, port int) string {
	for _, line := range up.info("replicas") {
		if !strings.Contains(line, ",port="+strconv.Itoa(port)+",") {
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

// A hostile or broken upstream that names a codec and then sends bytes
// that do not decode (a block header claiming 16 MiB, then junk) costs the
// proxy that connection only: it allocates no such block, keeps serving
// its own clients, and connects again.
func TestUndecodableCompressedStreamFromUpstream(t *testing.T) {
	t.Parallel()
	for _, codec := range []string{"s2", "zstd"} {
		t.Run(codec, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			conns := make(chan struct{}, 100)
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					conns <- struct{}{}
					go hostileCompressedMaster(c, codec)
				}
			}()
			cfg := proxyConfig(t, ln.Addr().String())
			cfg.Master.Compression = codec
			p := startProxy(t, cfg)
			deadline := time.After(30 * time.Second)
			for seen := 0; seen < 3; {
				select {
				case <-conns:
					seen++
				case <-deadline:
					t.Fatalf("the proxy connected %d times to the broken upstream in 30 s", seen)
				}
			}
			if got := p.info("server")["redis_version"]; got == "" {
				t.Fatal("the proxy stopped answering INFO after undecodable streams")
			}
		})
	}
}

// hostileCompressedMaster answers a replica's handshake, names codec after
// +FULLRESYNC, then sends what no decoder accepts.
func hostileCompressedMaster(c net.Conn, codec string) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		cmd, err := readCommand(br)
		if err != nil {
			return
		}
		switch strings.ToUpper(cmd[0]) {
		case "PING":
			c.Write([]byte("+PONG\r\n"))
		case "REPLCONF":
			c.Write([]byte("+OK\r\n"))
		case "PSYNC":
			c.Write([]byte("+FULLRESYNC " + strings.Repeat("a", 40) + " 0 " + codec + "\r\n"))
			// s2: a compressed-data chunk claiming 16 MiB; zstd: a bad magic.
			c.Write([]byte{0xff, 0x06, 0x00, 0x00, 'S', '2', 's', 'T', 'w', 'O', 0x00, 0xff, 0xff, 0xff})
			c.Write(bytes.Repeat([]byte{0xa5}, 64<<10))
			io.Copy(io.Discard, c)
			return
		}
	}
}

// readCommand reads one RESP array of bulk strings.
func readCommand(br *bufio.Reader) ([]string, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return nil, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "*")))
	if err != nil || n < 1 {
		return nil, fmt.Errorf("bad array header %q", line)
	}
	out := make([]string, 0, n)
	for range n {
		hdr, err := br.ReadString('\n')
		if err != nil {
			return nil, err
		}
		size, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(hdr, "$")))
		if err != nil || size < 0 || size > 1<<20 {
			return nil, fmt.Errorf("bad bulk header %q", hdr)
		}
		buf := make([]byte, size+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return nil, err
		}
		out = append(out, string(buf[:size]))
	}
	return out, nil
}
