package proxy

import (
	"context"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/fanout"
	"github.com/replproxy/replproxy/internal/periodic"
	"github.com/replproxy/replproxy/upstream"
)

// Kinds of long work whose progress is shown.
const (
	workUpstreamSync    = "upstream_full_sync" // the RDB from the master
	workSnapshotRefresh = "snapshot_refresh"   // an rdb-only RDB from the master
	workReplicaSync     = "replica_full_sync"  // the snapshot, to a replica
	workReplicaCatchup  = "replica_catchup"    // the backlog, to a replica far behind
	workRDBConversion   = "rdb_conversion"     // the snapshot, re-encoded for older replicas
)

// catchupBytes is the lag from which an online replica counts as catching
// up, and catchupDoneBytes the lag at which it has caught up.
const (
	catchupBytes     = 8 << 20
	catchupDoneBytes = 1 << 20
)

// Work is one piece of long work as INFO, metrics and the log show it.
type Work struct {
	Kind    string
	Peer    string // the master's or the replica's ip:port
	Done    int64
	Total   int64   // -1: unknown
	Rate    float64 // bytes per second, smoothed
	ETA     float64 // seconds; -1: unknown
	Started time.Time
	Keys    int64 // keys done, for a conversion
}

// Percent of Total done, or -1 when Total is unknown.
func (w Work) Percent() float64 {
	if w.Total <= 0 {
		return -1
	}
	return min(100, 100*float64(w.Done)/float64(w.Total))
}

type workState struct {
	Work
	lastDone int64
	lastAt   time.Time
	lastLog  time.Time
	startOff int64 // catch-up: where the replica was when it started
}

// progress samples the long work once a second, smooths rates, and logs a
// line per work every interval while it runs.
type progress struct {
	p        *Proxy
	log      zerolog.Logger
	interval time.Duration

	mu      sync.Mutex
	works   map[string]*workState
	ingest  float64 // stream bytes per second from the master, smoothed
	lastEnd int64
	lastAt  time.Time
}

func newProgress(p *Proxy, interval time.Duration) *progress {
	if interval <= 0 {
		interval = 10 * time.Second
	}
	return &progress{p: p, interval: interval, works: map[string]*workState{},
		log: p.log.With().Str("component", "progress").Logger()}
}

func (pg *progress) run(ctx context.Context) {
	periodic.Run(ctx, time.Second, nil, pg.sample)
}

// Works returns the work running at the last sample.
func (pg *progress) Works() []Work {
	pg.mu.Lock()
	defer pg.mu.Unlock()
	out := make([]Work, 0, len(pg.works))
	for _, w := range pg.works {
		out = append(out, w.Work)
	}
	return out
}

// find returns the running work of a kind for a peer.
func (pg *progress) find(kind, peer string) (Work, bool) {
	pg.mu.Lock()
	defer pg.mu.Unlock()
	w, ok := pg.works[kind+" "+peer]
	if !ok {
		return Work{}, false
	}
	return w.Work, true
}

func (pg *progress) sample(now time.Time) {
	seen := pg.current(now)
	pg.mu.Lock()
	defer pg.mu.Unlock()
	st := pg.p.store.State()
	if !pg.lastAt.IsZero() && st.End >= pg.lastEnd {
		pg.ingest = smooth(pg.ingest, float64(st.End-pg.lastEnd)/now.Sub(pg.lastAt).Seconds())
	}
	pg.lastEnd, pg.lastAt = st.End, now
	for key, w := range seen {
		old, ok := pg.works[key]
		if !ok {
			w.lastAt, w.lastDone, w.lastLog = now, w.Done, now
			pg.works[key] = w
			pg.logStart(w)
			continue
		}
		old.update(w, now, pg.ingest)
		if now.Sub(old.lastLog) >= pg.interval {
			old.lastLog = now
			pg.logProgress(old.Work)
		}
	}
	for key, w := range pg.works {
		if _, ok := seen[key]; !ok {
			delete(pg.works, key)
			pg.logEnd(w, now)
		}
	}
}

func (w *workState) update(cur *workState, now time.Time, ingest float64) {
	dt := now.Sub(w.lastAt).Seconds()
	if dt > 0 && cur.Done >= w.lastDone {
		w.Rate = smooth(w.Rate, float64(cur.Done-w.lastDone)/dt)
	}
	w.lastDone, w.lastAt = cur.Done, now
	w.Done, w.Total, w.Keys = cur.Done, cur.Total, cur.Keys
	w.ETA = -1
	left := float64(w.Total - w.Done)
	gain := w.Rate
	if w.Kind == workReplicaCatchup {
		gain -= ingest // the target moves on while the replica catches up
	}
	if w.Total >= 0 && gain > 0 {
		w.ETA = max(0, left/gain)
	}
}

// smooth is an exponentially weighted mean over about three samples.
func smooth(avg, x float64) float64 {
	if avg == 0 {
		return x
	}
	return 0.6*avg + 0.4*x
}

// current lists the work running now, keyed by kind and peer.
func (pg *progress) current(now time.Time) map[string]*workState {
	p := pg.p
	out := map[string]*workState{}
	add := func(w Work, startOff int64) {
		out[w.Kind+" "+w.Peer] = &workState{Work: w, startOff: startOff}
	}
	master := p.link.Addr()
	if p.link.Sync.Active.Load() {
		add(transferWork(workUpstreamSync, master, &p.link.Sync), 0)
	}
	if p.snap.Bytes.Active.Load() {
		add(transferWork(workSnapshotRefresh, master, &p.snap.Bytes), 0)
	}
	for _, cv := range p.fan.Conversions() {
		// Peer names the target: one conversion runs per snapshot and
		// RDB version, shared by the replicas that need it.
		add(Work{Kind: workRDBConversion, Peer: cv.Target, Done: cv.Done, Total: cv.Total, ETA: -1,
			Keys: cv.Keys, Started: cv.Started}, 0)
	}
	st := p.store.State()
	pg.mu.Lock()
	prev := pg.works
	defer pg.mu.Unlock()
	for _, r := range latestReplicas(p.fan.Replicas()) {
		peer := replicaName(r)
		switch r.State {
		case fanout.StateSendBulk:
			total := int64(-1)
			if st.Snapshot != nil && st.Snapshot.Offset+1 == r.SentOff {
				total = st.Snapshot.Size
			}
			add(Work{Kind: workReplicaSync, Peer: peer, Done: r.SentBytes, Total: total, Started: startedOf(prev, workReplicaSync, peer, now)}, 0)
		case fanout.StateOnline:
			lag := st.End - r.SentOff
			old, tracking := prev[workReplicaCatchup+" "+peer]
			if lag < catchupBytes && !(tracking && lag > catchupDoneBytes) {
				continue
			}
			start := r.SentOff
			if tracking {
				start = old.startOff
			}
			add(Work{Kind: workReplicaCatchup, Peer: peer, Done: r.SentOff - start, Total: st.End - start,
				Started: startedOf(prev, workReplicaCatchup, peer, now)}, start)
		}
	}
	return out
}

func startedOf(prev map[string]*workState, kind, peer string, now time.Time) time.Time {
	if w, ok := prev[kind+" "+peer]; ok {
		return w.Started
	}
	return now
}

func transferWork(kind, peer string, t *upstream.Transfer) Work {
	return Work{Kind: kind, Peer: peer, Done: t.Done.Load(), Total: t.Total.Load(), ETA: -1,
		Started: time.Unix(0, t.Started.Load())}
}

func (pg *progress) event(w Work) *zerolog.Event {
	ev := pg.log.Info().Str("work", w.Kind).Str("peer", w.Peer).Int64("bytes_done", w.Done).Int64("bytes_total", w.Total)
	if w.Kind == workRDBConversion {
		ev = ev.Int64("keys", w.Keys)
	}
	return ev
}

func (pg *progress) logStart(w *workState) {
	pg.event(w.Work).Msg("long work started")
}

func (pg *progress) logProgress(w Work) {
	pg.event(w).Float64("percent", round1(w.Percent())).Int64("rate_bytes_per_sec", int64(w.Rate)).
		Float64("eta_seconds", round1(w.ETA)).Int64("elapsed_seconds", int64(time.Since(w.Started).Seconds())).Msg("progress")
}

func (pg *progress) logEnd(w *workState, now time.Time) {
	pg.event(w.Work).Int64("elapsed_seconds", int64(now.Sub(w.Started).Seconds())).Msg("long work ended")
}

func round1(x float64) float64 { return float64(int64(x*10)) / 10 }

// replicaName is how replicas are labelled everywhere: their announced ip:port.
func replicaName(r fanout.ReplicaInfo) string {
	return net.JoinHostPort(r.IP, strconv.Itoa(r.Port))
}

// latestReplicas keeps one session per ip:port, the newest: while a
// replica reconnects its old session may linger for a moment, and series
// must not double or flap.
func latestReplicas(reps []fanout.ReplicaInfo) []fanout.ReplicaInfo {
	idx := map[string]int{}
	var out []fanout.ReplicaInfo
	for _, r := range reps {
		name := replicaName(r)
		if i, ok := idx[name]; ok {
			if r.ID > out[i].ID {
				out[i] = r
			}
			continue
		}
		idx[name] = len(out)
		out = append(out, r)
	}
	return out
}
