package main

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/internal/wan"
)

// wanOptions are the wan scenario's flags.
type wanOptions struct {
	rateMbit    float64
	burstMBps   float64
	burstTime   time.Duration
	replicas    int
	keys        int
	cobl        string
	topologies  string
	settle      time.Duration
	flaps       int
	flapDown    time.Duration
	runs        int
	out         string
	nsPrefix    string
	sampleEvery time.Duration
}

// valid says every size and count is positive (keys and flaps may be 0).
func (o wanOptions) valid() bool {
	return o.rateMbit > 0 && o.burstMBps > 0 && o.burstTime > 0 && o.replicas >= 1 && o.keys >= 0 &&
		o.settle > 0 && o.flaps >= 0 && o.flapDown > 0 && o.runs >= 1 && o.sampleEvery > 0
}

// wanTopology is one way of putting region B's replicas behind region A's
// master.
type wanTopology struct {
	name  string
	far   bool   // a proxy in B
	chain bool   // and a proxy in A before it
	codec string // master.compression of the proxy in B
}

func parseTopologies(list string) ([]wanTopology, error) {
	var out []wanTopology
	for _, name := range strings.Split(list, ",") {
		switch name = strings.TrimSpace(name); {
		case name == "direct":
			out = append(out, wanTopology{name: name})
		case name == "far":
			out = append(out, wanTopology{name: name, far: true, codec: "none"})
		case strings.HasPrefix(name, "chain-"):
			codec := strings.TrimPrefix(name, "chain-")
			if codec != "none" && codec != "s2" && codec != "zstd" && codec != "auto" {
				return nil, fmt.Errorf("topology %q: want chain-none, chain-s2, chain-zstd or chain-auto", name)
			}
			out = append(out, wanTopology{name: name, far: true, chain: true, codec: codec})
		default:
			return nil, fmt.Errorf("topology %q: want direct, far or chain-<codec>", name)
		}
	}
	return out, nil
}

// wanResult is one topology's row of the table.
type wanResult struct {
	topo        string
	fullSyncs   int64
	linkBytes   int64
	stream      int64
	memPeak     int64
	converge    time.Duration // -1: not within -wan-settle
	senderCPU   float64       // the proxy in A, seconds; -1 when there is none
	digestsSame bool
}

// wanSample is one moment of a run, for the CSV and the plot.
type wanSample struct {
	t        float64 // seconds since the burst began
	memSlave int64   // the master's mem_clients_slaves
	lag      []int64 // each region-B replica's lag behind the master, bytes
	tx       int64   // link bytes so far
}

func (b *bench) wan(ctx context.Context) error {
	o := b.opt.wan
	topos, err := parseTopologies(o.topologies)
	if err != nil {
		return err
	}
	b.printf("\n== wan: region A (master) and region B (%d replicas) in two network namespaces,\n", o.replicas)
	b.printf("   joined by a veth pair shaped with tbf to %.0f Mbit/s each way (addresses in 198.18.0.0/15);\n", o.rateMbit)
	b.printf("   master: %d keys, client-output-buffer-limit %s; burst of %.0f MB/s of JSON-like SETs for %s.\n",
		o.keys, o.cobl, o.burstMBps, o.burstTime)
	if o.out == "" {
		o.out = b.env.root
	}
	var rows [][]wanResult
	samples := map[string][]wanSample{}
	for run := 1; run <= o.runs; run++ {
		var row []wanResult
		for _, topo := range topos {
			res, s, err := b.wanRun(ctx, topo, run)
			b.env.Close()
			if err != nil {
				if errors.Is(err, wan.ErrUnavailable) {
					b.printf("   skipped: %v (the wan scenario needs root, ip, tc and the tbf qdisc)\n", err)
					return nil
				}
				return fmt.Errorf("%s: %w", topo.name, err)
			}
			row = append(row, res)
			if run == 1 {
				samples[topo.name] = s
			}
		}
		rows = append(rows, row)
	}
	b.wanTable(rows)
	if err := writeWANSamples(filepath.Join(o.out, "wan-samples.csv"), samples); err != nil {
		return err
	}
	if err := plotWAN(o.out, samples); err != nil {
		return err
	}
	b.printf("   samples: %s; plots: %s, %s\n", filepath.Join(o.out, "wan-samples.csv"),
		filepath.Join(o.out, "wan-buffer.svg"), filepath.Join(o.out, "wan-lag.svg"))
	if o.flaps > 0 {
		return b.wanFlaps(ctx)
	}
	return nil
}

// region is where a wan process runs: inside namespace ns, listening on
// host. The scenario reaches a proxy there by a socket made in ns.
func region(ns, host string) redisproc.Place {
	return redisproc.Place{Prefix: wan.In(ns), Host: host, Dial: wan.Dialer(ns)}
}

// wanRegions is one run's link and master.
type wanRegions struct {
	link   *wan.Link
	master *child
}

func (b *bench) wanSetup(ctx context.Context, name string) (*wanRegions, error) {
	o := b.opt.wan
	l, err := wan.Setup(ctx, o.nsPrefix, int64(o.rateMbit*1e6))
	if err != nil {
		return nil, err
	}
	r := &wanRegions{link: l}
	m, err := b.env.startRedisAt(ctx, name+"-master", region(l.NsA, wan.AddrA),
		"--client-output-buffer-limit", o.cobl, "--enable-debug-command", "yes")
	if err != nil {
		l.Close()
		return nil, err
	}
	r.master = m
	if o.keys == 0 {
		return r, nil
	}
	if _, err := m.Do("DEBUG", "POPULATE", strconv.Itoa(o.keys), "user:", "256"); err != nil {
		l.Close()
		return nil, fmt.Errorf("populate: %w", err)
	}
	return r, nil
}

// wanRun builds the link, the topology, writes the burst, and measures.
func (b *bench) wanRun(ctx context.Context, topo wanTopology, run int) (wanResult, []wanSample, error) {
	o := b.opt.wan
	res := wanResult{topo: topo.name, senderCPU: -1, converge: -1}
	name := fmt.Sprintf("wan-%d-%s", run, topo.name)
	reg, err := b.wanSetup(ctx, name)
	if err != nil {
		return res, nil, err
	}
	defer reg.link.Close()
	l, m := reg.link, reg.master
	upstream := m
	var sender *child
	if topo.chain {
		pa, err := b.env.startProxyAt(ctx, name+"-proxyA", b.wanProxyConfig(m, "none"), region(l.NsA, wan.AddrA))
		if err != nil {
			return res, nil, err
		}
		upstream, sender = pa, pa
	}
	if topo.far {
		pb, err := b.env.startProxyAt(ctx, name+"-proxyB", b.wanProxyConfig(upstream, topo.codec), region(l.NsB, wan.AddrB))
		if err != nil {
			return res, nil, err
		}
		upstream = pb
	}
	var replicas []*child
	for i := range o.replicas {
		r, err := b.env.startRedisAt(ctx, fmt.Sprintf("%s-replica%d", name, i), region(l.NsB, wan.AddrB),
			"--replicaof", upstream.Host, strconv.Itoa(upstream.Port))
		if err != nil {
			return res, nil, err
		}
		replicas = append(replicas, r)
	}
	if err := waitInSync(ctx, o.settle, m, replicas); err != nil {
		return res, nil, fmt.Errorf("initial sync: %w", err)
	}

	full0, _ := infoField(m, "stats", "sync_full")
	off0, _ := infoField(m, "replication", "master_repl_offset")
	tx0, err := l.TxBytes(ctx)
	if err != nil {
		return res, nil, err
	}
	var cpu0 float64
	if sender != nil {
		cpu0 = procCPU(sender)
	}
	burst := wan.PrepareBurst(int64(o.burstMBps*1e6), o.burstTime)
	start := time.Now()
	smp := newWANSampler(m, replicas, l, start)
	sctx, stopSampling := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		smp.run(sctx, o.sampleEvery)
	}()
	defer func() {
		stopSampling()
		wg.Wait()
	}()

	if _, err := burst.Send(ctx, "unix", m.Socket()); err != nil {
		return res, nil, err
	}
	burstEnd := time.Now()
	if err := waitInSync(ctx, o.settle, m, replicas); err == nil {
		res.converge = time.Since(burstEnd)
	} else if ctx.Err() != nil {
		return res, nil, ctx.Err()
	}
	// A little more, so the plot shows the calm after.
	time.Sleep(2 * o.sampleEvery)
	stopSampling()
	wg.Wait()

	full1, _ := infoField(m, "stats", "sync_full")
	off1, _ := infoField(m, "replication", "master_repl_offset")
	tx1, _ := l.TxBytes(ctx)
	res.fullSyncs, res.stream, res.linkBytes = full1-full0, off1-off0, tx1-tx0
	if sender != nil {
		res.senderCPU = procCPU(sender) - cpu0
	}
	res.memPeak = smp.peak()
	b.printf("   run %d %-11s full syncs %d, link %.0f MB, stream %.0f MB, buffer peak %.0f MiB, converged %s\n",
		run, topo.name, res.fullSyncs, float64(res.linkBytes)/1e6, float64(res.stream)/1e6, mib(res.memPeak), convergeText(res.converge))
	if res.converge >= 0 {
		res.digestsSame, err = digestsEqual(m, replicas)
		if err != nil {
			return res, nil, err
		}
	}
	return res, smp.samples(), nil
}

func convergeText(d time.Duration) string {
	if d < 0 {
		return "no"
	}
	return fmt.Sprintf("%.0f s", d.Seconds())
}

func digestsEqual(m *child, replicas []*child) (bool, error) {
	want, err := patientDigest(m)
	if err != nil {
		return false, err
	}
	for _, r := range replicas {
		got, err := patientDigest(r)
		if err != nil {
			return false, err
		}
		if got != want {
			return false, nil
		}
	}
	return true, nil
}

// patientDigest gives DEBUG DIGEST two minutes: on a busy machine, 100k
// keys can outlast the usual command timeout.
func patientDigest(c *child) (string, error) {
	r, err := c.DoWithin(2*time.Minute, "DEBUG", "DIGEST")
	if err != nil {
		return "", fmt.Errorf("%s: DEBUG DIGEST: %w", c.name, err)
	}
	s, _ := r.(string)
	return s, nil
}

// wanProxyConfig is a proxy of upstream that asks for codec. Protected
// mode is off: the namespaces hold only the scenario's processes.
func (b *bench) wanProxyConfig(upstream *child, codec string) string {
	return fmt.Sprintf(`protected_mode: false
master:
  addr: %s
  compression: %s
backlog:
  max_bytes: 4GiB
  segment_bytes: 64MiB
  fsync: everysec
snapshot:
  refresh_after: 1TiB
log:
  level: info
`, upstream.Addr(), codec)
}

// wanSampler polls the master and the replicas.
type wanSampler struct {
	m        *child
	replicas []*child
	link     *wan.Link
	start    time.Time

	mu   sync.Mutex
	rows []wanSample
}

func newWANSampler(m *child, replicas []*child, l *wan.Link, start time.Time) *wanSampler {
	return &wanSampler{m: m, replicas: replicas, link: l, start: start}
}

func (s *wanSampler) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		s.sample(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *wanSampler) sample(ctx context.Context) {
	mem, err1 := infoField(s.m, "memory", "mem_clients_slaves")
	off, err2 := infoField(s.m, "replication", "master_repl_offset")
	if err1 != nil || err2 != nil {
		return
	}
	row := wanSample{t: time.Since(s.start).Seconds(), memSlave: mem}
	for i, r := range s.replicas {
		// A replica in a full sync still reports the offset of the data
		// it holds: its lag is what it misses.
		info, err := r.info("replication")
		var lag int64
		switch {
		case err == nil && infoInt(info, "slave_repl_offset") >= 0:
			lag = max(off-infoInt(info, "slave_repl_offset"), 0)
		case len(s.rows) > 0:
			lag = s.rows[len(s.rows)-1].lag[i]
		}
		row.lag = append(row.lag, lag)
	}
	row.tx, _ = s.link.TxBytes(ctx)
	s.mu.Lock()
	s.rows = append(s.rows, row)
	s.mu.Unlock()
}

func (s *wanSampler) peak() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var p int64
	for _, r := range s.rows {
		p = max(p, r.memSlave)
	}
	return p
}

func (s *wanSampler) samples() []wanSample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]wanSample(nil), s.rows...)
}

// wanTable prints each run's rows and, over several runs, the median.
func (b *bench) wanTable(rows [][]wanResult) {
	b.printf("\n| run | topology | master full syncs | link MB | master replica-buffer peak MiB | converged after the burst | wire/stream | sender CPU s/GB | digests |\n")
	b.printf("|---|---|---|---|---|---|---|---|---|\n")
	for i, row := range rows {
		for _, r := range row {
			cpu := "-"
			if r.senderCPU >= 0 {
				cpu = fmt.Sprintf("%.2f", r.senderCPU/gb(r.stream))
			}
			conv := "not within -wan-settle"
			if r.converge >= 0 {
				conv = fmt.Sprintf("%.1f s", r.converge.Seconds())
			}
			dig := "equal"
			if !r.digestsSame {
				dig = "-"
			}
			b.printf("| %d | %s | %d | %.0f | %.0f | %s | %.3f | %s | %s |\n", i+1, r.topo, r.fullSyncs,
				float64(r.linkBytes)/1e6, mib(r.memPeak), conv, ratio(r.linkBytes, r.stream), cpu, dig)
		}
	}
}

func writeWANSamples(path string, samples map[string][]wanSample) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("write samples: %w", err)
	}
	w := csv.NewWriter(f)
	w.Write([]string{"topology", "seconds", "mem_clients_slaves", "link_bytes", "replica", "lag_bytes"})
	for topo, rows := range samples {
		for _, r := range rows {
			for i, lag := range r.lag {
				w.Write([]string{topo, strconv.FormatFloat(r.t, 'f', 2, 64), strconv.FormatInt(r.memSlave, 10),
					strconv.FormatInt(r.tx, 10), strconv.Itoa(i), strconv.FormatInt(lag, 10)})
			}
		}
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return fmt.Errorf("write samples: %w", err)
	}
	return f.Close()
}
