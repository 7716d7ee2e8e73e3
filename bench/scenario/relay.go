package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// relayProbeEvery is how often a PUBLISH probe goes to the master: often
// enough for a few thousand samples in a run, rare enough to be no load.
const relayProbeEvery = 2 * time.Millisecond

// relayQuiet is how long probes go out before the load: their lag is the
// relay path's own, with no queue in front of it.
const relayQuiet = 3 * time.Second

// relaySteady is how long the moderate steady load runs, after the quiet
// phase and before the saturating one: one client writing 512-byte SETs
// without pipelining, so every tiny write is its own append.
const relaySteady = 5 * time.Second

// The phases of a run, in order.
const (
	phaseQuiet = iota
	phaseSteady
	phaseLoad
)

var phaseNames = [...]string{"quiet", "steady", "load"}

// relayRun is one side-by-side run: the chained redis-server A and the
// proxy P relay the same stream from the same master at the same time.
type relayRun struct {
	stream     int64
	chainCPU   float64
	proxyCPU   float64
	lag        [3][]probe // D, RA, RB
	quietEnd   time.Time  // probes sent before this went out with no load
	steadyEnd  time.Time  // probes sent from quietEnd to this went out under the steady load
	otherCPU   float64    // -relay-against: the other build's CPU for the same stream
	steadySets int        // SETs of the steady phase
	// CPU seconds of A, P and Q (-relay-against) in the steady phase.
	steadyChain, steadyProxy, steadyOther float64
	load                                  time.Duration
	loadOutput                            string
}

func (r relayRun) cpuRatio() float64 { return r.proxyCPU / r.chainCPU }

// phase says in which phase a probe sent at t went out.
func (r relayRun) phase(t time.Time) int {
	switch {
	case t.Before(r.quietEnd):
		return phaseQuiet
	case t.Before(r.steadyEnd):
		return phaseSteady
	}
	return phaseLoad
}

// p50 of the probes of subscriber i sent in one phase.
func (r relayRun) p50(i int, phase int) time.Duration {
	var d []time.Duration
	for _, p := range r.lag[i] {
		if r.phase(p.sent) == phase {
			d = append(d, p.lag)
		}
	}
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[len(d)/2]
}

// added is the p50 of the extra lag of subscriber i over D, probe by
// probe: each probe reached D and i from the same PUBLISH, so the
// difference for one probe leaves out the publisher's and the master's own
// delays, which the difference of two medians would keep as noise.
func (r relayRun) added(i int, phase int) time.Duration {
	atD := make(map[time.Time]time.Duration, len(r.lag[0]))
	for _, p := range r.lag[0] {
		atD[p.sent] = p.lag
	}
	var d []time.Duration
	for _, p := range r.lag[i] {
		if dl, ok := atD[p.sent]; ok && r.phase(p.sent) == phase {
			d = append(d, p.lag-dl)
		}
	}
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[len(d)/2]
}

type probe struct {
	sent time.Time
	lag  time.Duration
}

// relay compares the proxy with what users would otherwise run: a chained
// Redis replica. Master M has a direct replica D, a chained redis-server A
// with its replica RA, and the proxy P with its replica RB. The same
// redis-benchmark load goes through all of them at once, so the machine's
// other work weighs on both sides alike.
func (b *bench) relay(ctx context.Context) error {
	b.printf("\n== relay: chained redis-server A (replica RA) vs. replproxy P (replica RB), same master, same run;\n")
	b.printf("   load: redis-benchmark -t set -d 512 -r 1000000 -n %d -P 16 -c 20; PUBLISH probes every %s read on D, RA, RB\n",
		b.opt.relayRequests, relayProbeEvery)
	b.printf("   lags: 'quiet' probes go out for %s with no load, 'steady' ones for %s while one client writes 512-byte SETs\n", relayQuiet, relaySteady)
	b.printf("   without pipelining, 'load' ones during the benchmark and until all caught up;\n")
	b.printf("   D is the p50 on the direct replica, RA-D and RB-D the p50 of each probe's extra lag on RA and RB\n")
	b.printf("%-4s %9s %6s %7s %7s %7s %9s %9s %9s %9s %9s %9s %9s %9s %9s %9s %9s\n", "run", "stream MB", "load s", "A CPU s", "P CPU s",
		"P/A CPU", "quiet D", "RA-D", "RB-D", "steady D", "RA-D", "RB-D", "load D", "RA-D", "RB-D", "samples", "steady P/A")
	var runs []relayRun
	for i := 0; i < b.opt.relayRuns; i++ {
		r, err := b.relayOne(ctx, i)
		b.teardown()
		if err != nil {
			return fmt.Errorf("run %d: %w", i+1, err)
		}
		b.printf("%-4d %9.0f %6.1f %7.2f %7.2f %7.3f", i+1, float64(r.stream)/1e6, r.load.Seconds(),
			r.chainCPU, r.proxyCPU, r.cpuRatio())
		for ph := range phaseNames {
			b.printf(" %9s %9s %9s", us(r.p50(0, ph)), us(r.added(1, ph)), us(r.added(2, ph)))
		}
		b.printf(" %9d %9.3f\n", len(r.lag[2]), r.steadyProxy/r.steadyChain)
		b.printf("     steady phase: %d SETs, CPU A %.3f s, P %.3f s\n", r.steadySets, r.steadyChain, r.steadyProxy)
		if r.otherCPU > 0 {
			b.printf("     -relay-against build: %.2f s CPU, %.3f of this build's, %.3f of the chained Redis's; steady phase %.3f s, %.3f of this build's\n",
				r.otherCPU, r.otherCPU/r.proxyCPU, r.otherCPU/r.chainCPU, r.steadyOther, r.steadyOther/r.steadyProxy)
		}
		runs = append(runs, r)
	}
	b.printf("\n   relay CPU per GB, proxy / chained Redis (target <= 0.25):")
	for _, r := range runs {
		b.printf(" %.3f", r.cpuRatio())
	}
	if b.opt.relayAgainst != "" {
		b.printf("\n   -relay-against build's CPU / this build's, load:")
		for _, r := range runs {
			b.printf(" %.3f", r.otherCPU/r.proxyCPU)
		}
		b.printf("\n   -relay-against build's CPU / this build's, steady:")
		for _, r := range runs {
			b.printf(" %.3f", r.steadyOther/r.steadyProxy)
		}
	}
	for ph, name := range phaseNames {
		b.printf("\n   added lag over D (%s; p50 of per-probe differences), proxy vs. chained Redis (target: proxy <= chained and < 50 µs):", name)
		for _, r := range runs {
			b.printf(" %s vs %s;", us(r.added(2, ph)), us(r.added(1, ph)))
		}
	}
	b.printf("\n")
	return nil
}

func us(d time.Duration) string { return fmt.Sprintf("%+.0fµs", float64(d)/1e3) }

func (b *bench) relayOne(ctx context.Context, run int) (relayRun, error) {
	var r relayRun
	pre := fmt.Sprintf("relay%d-", run+1)
	m, err := b.startMaster(ctx, pre+"M")
	if err != nil {
		return r, err
	}
	d, err := b.startReplica(ctx, pre+"D", m)
	if err != nil {
		return r, err
	}
	var a, ra, p, rb *child
	chain := func() (err error) {
		if a, err = b.startReplica(ctx, pre+"A", m); err != nil {
			return err
		}
		if _, err := a.Do("CONFIG", "SET", "client-output-buffer-limit", "replica 0 0 0"); err != nil {
			return fmt.Errorf("A: CONFIG SET: %w", err)
		}
		ra, err = b.startReplica(ctx, pre+"RA", a)
		return err
	}
	proxy := func() (err error) {
		if p, err = b.startProxy(ctx, pre+"P", m, 2<<30, "everysec"); err != nil {
			return err
		}
		rb, err = b.startReplica(ctx, pre+"RB", p)
		return err
	}
	// The master writes to its replicas one after another, in the order
	// they attached: A and P take turns at going first, so neither side's
	// lag carries the other's socket write every time.
	first, second := chain, proxy
	if run%2 == 1 {
		first, second = proxy, chain
	}
	if err := first(); err != nil {
		return r, err
	}
	if err := second(); err != nil {
		return r, err
	}
	synced := []*child{d, ra, rb}
	var q *child
	if b.opt.relayAgainst != "" {
		if q, err = b.startProxyBin(ctx, pre+"Q", b.opt.relayAgainst, m); err != nil {
			return r, err
		}
		rq, err := b.startReplica(ctx, pre+"RQ", q)
		if err != nil {
			return r, err
		}
		synced = append(synced, rq)
	}
	if err := waitInSync(ctx, time.Minute, m, synced); err != nil {
		return r, err
	}

	probeCtx, stopProbes := context.WithCancel(ctx)
	defer stopProbes()
	var wg sync.WaitGroup
	for i, c := range []*child{d, ra, rb} {
		sub, err := subscribe(ctx, c, "probe")
		if err != nil {
			return r, fmt.Errorf("%s: SUBSCRIBE: %w", c.name, err)
		}
		defer sub.Close()
		context.AfterFunc(probeCtx, func() { sub.Close() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.lag[i] = readProbes(probeCtx, sub)
		}()
	}
	pub := m.Client()
	probeDone := make(chan struct{})
	go func() {
		defer close(probeDone)
		t := time.NewTicker(relayProbeEvery)
		defer t.Stop()
		for {
			select {
			case <-probeCtx.Done():
				return
			case <-t.C:
			}
			if err := pub.Publish(probeCtx, "probe", strconv.FormatInt(time.Now().UnixNano(), 10)).Err(); err != nil {
				return
			}
		}
	}()

	select {
	case <-ctx.Done():
		return r, ctx.Err()
	case <-time.After(relayQuiet):
	}
	r.quietEnd = time.Now()
	sa, sp, sq := procCPU(a), procCPU(p), 0.0
	if q != nil {
		sq = procCPU(q)
	}
	if r.steadySets, err = steadyLoad(ctx, m, relaySteady); err != nil {
		return r, err
	}
	r.steadyEnd = time.Now()
	r.steadyChain, r.steadyProxy = procCPU(a)-sa, procCPU(p)-sp
	if q != nil {
		r.steadyOther = procCPU(q) - sq
	}
	off0, err := infoField(m, "replication", "master_repl_offset")
	if err != nil {
		return r, err
	}
	a0, p0 := procCPU(a), procCPU(p)
	var q0 float64
	if q != nil {
		q0 = procCPU(q)
	}
	start := time.Now()
	cmd := exec.CommandContext(ctx, "redis-benchmark", "-h", "127.0.0.1", "-p", strconv.Itoa(m.Port),
		"-t", "set", "-d", "512", "-r", "1000000", "-n", strconv.Itoa(b.opt.relayRequests), "-P", "16", "-c", "20", "-q")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	r.loadOutput = string(out)
	if err != nil {
		return r, fmt.Errorf("redis-benchmark: %w", err)
	}
	r.load = time.Since(start)
	if err := waitInSync(ctx, b.opt.timeout, m, synced); err != nil {
		return r, err
	}
	r.chainCPU, r.proxyCPU = procCPU(a)-a0, procCPU(p)-p0
	if q != nil {
		r.otherCPU = procCPU(q) - q0
	}
	off1, err := infoField(m, "replication", "master_repl_offset")
	if err != nil {
		return r, err
	}
	r.stream = off1 - off0
	stopProbes()
	<-probeDone
	wg.Wait()
	return r, nil
}

// steadyLoad writes 512-byte SETs from one client, each waiting for its
// reply, for d, and returns how many it wrote.
func steadyLoad(ctx context.Context, m *child, d time.Duration) (int, error) {
	c := m.Client()
	value := string(make([]byte, 512))
	n := 0
	for end := time.Now().Add(d); time.Now().Before(end) && ctx.Err() == nil; n++ {
		if err := c.Set(ctx, "steady:"+strconv.Itoa(n%100000), value, 0).Err(); err != nil {
			return n, fmt.Errorf("steady load: SET: %w", err)
		}
	}
	return n, ctx.Err()
}

// subscribe returns once c has confirmed the subscription.
func subscribe(ctx context.Context, c *child, channel string) (*redis.PubSub, error) {
	sub := c.Client().Subscribe(ctx, channel)
	if _, err := sub.Receive(ctx); err != nil {
		sub.Close()
		return nil, err
	}
	return sub, nil
}

// readProbes collects, until the subscription closes, how long each probe
// took from PUBLISH on the master to arrival here.
func readProbes(ctx context.Context, sub *redis.PubSub) []probe {
	var lags []probe
	for {
		msg, err := sub.ReceiveMessage(ctx)
		now := time.Now()
		if err != nil {
			return lags
		}
		sent, err := strconv.ParseInt(msg.Payload, 10, 64)
		if err != nil {
			continue
		}
		at := time.Unix(0, sent)
		lags = append(lags, probe{sent: at, lag: now.Sub(at)})
	}
}
