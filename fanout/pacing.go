package fanout

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/rdbmeta"
)

// A replica that cannot load the snapshot (older than the master, say)
// reconnects at once and asks for another full sync. A Redis master pays a
// fork per attempt and so retries about once a second; the proxy serves a
// stored file and would loop as fast as the link allows, moving the whole
// snapshot each time. So a replica whose full sync failed waits before its
// next one: 1 s, doubling up to a minute, forgotten once it loads one.
const (
	pacingMin = time.Second
	pacingMax = time.Minute
	// maxPacedPeers bounds the replicas remembered: the key is what a
	// replica announces, so a hostile one can make up a new key per try.
	maxPacedPeers = 1024
)

// errReplicaGone ends a replica's session when its connection is closed,
// as opposed to the proxy shutting down or dropping it on purpose.
var errReplicaGone = errors.New("replica connection closed")

// pacer remembers, per replica (IP and listening port), the full syncs it
// failed, and caches what the current snapshot's RDB header says.
type pacer struct {
	mu    sync.Mutex
	peers map[string]*peerPacing

	metaMu   sync.Mutex
	metaFile string
	meta     rdbmeta.Info
}

type peerPacing struct {
	failures  int
	delay     time.Duration
	notBefore time.Time
	last      *fullSyncAttempt // the latest full sync, judged when its session ends
}

// peer returns key's entry, creating it. Called with p.mu held.
func (p *pacer) peer(key string) *peerPacing {
	pp := p.peers[key]
	if pp == nil {
		if len(p.peers) >= maxPacedPeers {
			p.forgetIdle()
		}
		if len(p.peers) >= maxPacedPeers {
			p.forgetOldest()
		}
		pp = &peerPacing{}
		p.peers[key] = pp
	}
	return pp
}

// judgementWait bounds how long a new session waits for the verdict on
// the previous one: a replica that failed reconnects at once, and its old
// session may be judged a moment after the new one asks.
const judgementWait = time.Second

func newPacer() *pacer {
	return &pacer{peers: map[string]*peerPacing{}}
}

func (r *replica) pacingKey() string {
	return r.ip + ":" + strconv.Itoa(r.port)
}

// paced reports whether this replica's full syncs are watched: plain SYNC
// replicas never ACK, and rdb-only clients leave after the RDB by design.
func (r *replica) paced() bool {
	return !r.prePsync && !r.rdbOnly
}

// waitPacing holds a replica whose last full sync failed until its backoff
// has passed, sending the newlines that keep a waiting replica patient.
func (r *replica) waitPacing(ctx context.Context) error {
	if !r.paced() {
		return nil
	}
	p := r.srv.pacer
	key := r.pacingKey()
	p.mu.Lock()
	var prev *fullSyncAttempt
	if pp := p.peers[key]; pp != nil {
		prev = pp.last
	}
	p.mu.Unlock()
	if prev != nil {
		if err := prev.awaitJudgement(ctx); err != nil {
			return err
		}
	}
	p.mu.Lock()
	var until time.Time
	if pp := p.peers[key]; pp != nil {
		until = pp.notBefore
	}
	p.mu.Unlock()
	wait := time.Until(until)
	if wait <= 0 {
		return nil
	}
	r.srv.stats.SyncFullPaced.Add(1)
	r.log.Debug().Dur("wait", wait).Msg("full sync paced after a failed one")
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-deadline.C:
			return nil
		case <-tick.C:
			if err := r.write([]byte("\n")); err != nil {
				return err
			}
		}
	}
}

// fullSyncAttempt watches one full sync until the session ends, to learn
// whether the replica loaded the snapshot.
type fullSyncAttempt struct {
	r    *replica
	snap backlog.SnapshotInfo
	meta rdbmeta.Info
	sent atomic.Bool   // the whole snapshot went out
	done chan struct{} // closed once judged
}

func (a *fullSyncAttempt) awaitJudgement(ctx context.Context) error {
	t := time.NewTimer(judgementWait)
	defer t.Stop()
	select {
	case <-a.done:
	case <-t.C: // the old session lives on (a half-open connection, say)
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	return nil
}

func (a *fullSyncAttempt) judged() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

// beginFullSync reads the snapshot's metadata, warns when the replica
// announced a version that cannot load it, and judges the attempt when the
// session ends.
func (r *replica) beginFullSync(ctx context.Context, f *os.File, snap backlog.SnapshotInfo) *fullSyncAttempt {
	p := r.srv.pacer
	a := &fullSyncAttempt{r: r, snap: snap, meta: p.snapshotMeta(f, snap), done: make(chan struct{})}
	if why := olderThanProducer(r.version, a.meta); why != "" {
		r.log.Warn().Str("replica_version", r.version).Str("rdb_header", a.meta.Header()).
			Str("producer", a.meta.Producer()).Msg("replica " + why + "; it will likely fail to load the snapshot")
	}
	if r.paced() {
		p.mu.Lock()
		p.peer(r.pacingKey()).last = a
		p.mu.Unlock()
		context.AfterFunc(ctx, func() { a.ended(context.Cause(ctx)) })
	}
	return a
}

func (a *fullSyncAttempt) snapshotSent() { a.sent.Store(true) }

// ended runs once the session is over. A Redis replica ACKs the snapshot's
// offset as soon as it has loaded it; one that left without doing so failed.
func (a *fullSyncAttempt) ended(cause error) {
	defer close(a.done)
	r := a.r
	if !errors.Is(cause, errReplicaGone) {
		return // the proxy stopped or dropped it: nothing learned
	}
	p := r.srv.pacer
	p.mu.Lock()
	defer p.mu.Unlock()
	pp := p.peer(r.pacingKey())
	if ack := r.ackOff.Load(); ack > 0 && ack >= a.snap.Offset {
		pp.failures, pp.delay, pp.notBefore = 0, 0, time.Time{}
		return
	}
	pp.failures++
	pp.delay = min(max(2*pp.delay, pacingMin), pacingMax)
	pp.notBefore = time.Now().Add(pp.delay)
	diagnosis, certainty := a.diagnose(pp.failures)
	ev := r.log.Debug()
	if pp.failures == 1 || (pp.failures == repeatedFailures && certainty == certaintyRepeated) {
		ev = r.log.Warn()
	}
	a.explain(ev, cause).Dur("next_full_sync_in", pp.delay).Int("failed_full_syncs", pp.failures).
		Str("diagnosis_certainty", certainty).Msg(a.cause() + "; " + diagnosis + "; its next full syncs are paced, 1s doubling to 1m")
}

// repeatedFailures full syncs in a row without an acknowledgement are the
// evidence that a replica that announced no version cannot load the
// snapshot: one failure is as likely a replica stopped or restarted on
// purpose right after loading it, before its first ACK.
const repeatedFailures = 3

// How sure a diagnosis of a failed full sync is, as logged.
const (
	certaintyVersion  = "announced_version" // the replica's REPLCONF version is too old for the RDB
	certaintyRepeated = "repeated_failures" // likely, from failures in a row
	certaintyNone     = "none"              // one failure says nothing of why
)

// diagnose says why the replica probably failed, and how sure that is,
// from its own evidence only: the version it announced, or failures in a
// row.
func (a *fullSyncAttempt) diagnose(failures int) (string, string) {
	if why := olderThanProducer(a.r.version, a.meta); why != "" {
		return "it cannot load it: " + why + " (certain, from the version the replica announced)", certaintyVersion
	}
	if failures >= repeatedFailures {
		return fmt.Sprintf("%d full syncs in a row ended so: likely a replica older than the master, which cannot load it "+
			"(a guess from repeated failures; the replica's own log says why)", failures), certaintyRepeated
	}
	return "it may have been stopped or restarted right after loading it, or have failed to load it " +
		"(nothing yet tells which; the replica's own log says why)", certaintyNone
}

// forgetIdle drops replicas that have not failed for a while, so that
// many that never come back do not pile up. Called with p.mu held.
func (p *pacer) forgetIdle() {
	cutoff := time.Now().Add(-2 * pacingMax)
	for key, pp := range p.peers {
		if pp.notBefore.Before(cutoff) && (pp.last == nil || pp.last.judged()) {
			delete(p.peers, key)
		}
	}
}

// forgetOldest drops the replica whose backoff ends first, when too many
// are remembered to keep them all: at worst that replica is paced less.
// Called with p.mu held.
func (p *pacer) forgetOldest() {
	var oldest string
	var at time.Time
	for key, pp := range p.peers {
		if oldest == "" || pp.notBefore.Before(at) {
			oldest, at = key, pp.notBefore
		}
	}
	delete(p.peers, oldest)
}

func (a *fullSyncAttempt) explain(ev *zerolog.Event, cause error) *zerolog.Event {
	ev = ev.Str("rdb_header", a.meta.Header()).Int("rdb_version", a.meta.Version).
		Str("producer", a.meta.Producer()).Str("reason", cause.Error())
	if a.r.version != "" {
		ev = ev.Str("replica_version", a.r.version)
	}
	return ev
}

// cause is the one sentence an operator needs: what was sent, and the
// usual reason such a replica gives up.
func (a *fullSyncAttempt) cause() string {
	what := fmt.Sprintf("an RDB version %d snapshot", a.meta.Version)
	if a.meta.Magic == "" {
		what = "a snapshot with no readable RDB header"
	}
	if prod := a.meta.Producer(); prod != "" {
		what += " (from " + prod + ")"
	}
	when := "right after"
	if !a.sent.Load() {
		when = fmt.Sprintf("during (after %d of %d bytes)", a.r.sentBytes.Load(), a.snap.Size)
	}
	return "the replica dropped the connection " + when + " " + what + " without acknowledging it"
}

// snapshotMeta reads the snapshot's header once per snapshot file. It
// reads with ReadAt, so f's offset stays at the start for sending.
func (p *pacer) snapshotMeta(f *os.File, snap backlog.SnapshotInfo) rdbmeta.Info {
	p.metaMu.Lock()
	defer p.metaMu.Unlock()
	if p.metaFile != snap.File {
		// Best effort: a header this proxy cannot read only makes the
		// log less specific.
		p.meta, _ = rdbmeta.Read(io.NewSectionReader(f, 0, snap.Size))
		p.metaFile = snap.File
	}
	return p.meta
}

// olderThanProducer says why a replica that announced its version (Valkey
// does, with REPLCONF version) will probably not load the snapshot, or "".
func olderThanProducer(replicaVer string, meta rdbmeta.Info) string {
	rv, ok := parseVersion(replicaVer)
	if !ok {
		return ""
	}
	// Valkey before 9.0 loads RDB versions up to 11, whoever wrote them.
	tooNew := meta.Magic == "VALKEY" || meta.Magic == "REDIS" && meta.Version > 11
	if tooNew && rv < packVersion(9, 0, 0) {
		return fmt.Sprintf("Valkey %s loads RDB versions up to 11, the snapshot is %s", replicaVer, meta.Header())
	}
	if pv, ok := parseVersion(meta.ValkeyVer); ok && rv < pv {
		return "version " + replicaVer + " is older than the snapshot's producer, Valkey " + meta.ValkeyVer
	}
	return ""
}

// parseVersion reads "major.minor.patch", each part 0-255, as Valkey
// accepts it in REPLCONF version.
func parseVersion(s string) (int, bool) {
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return 0, false
	}
	v := 0
	for _, part := range parts {
		n, err := strconv.Atoi(part)
		if err != nil || n < 0 || n > 255 || part == "" || part[0] == '+' || part[0] == '-' {
			return 0, false
		}
		v = v<<8 | n
	}
	return v, true
}

func packVersion(major, minor, patch int) int { return major<<16 | minor<<8 | patch }
