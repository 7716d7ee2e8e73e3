package upstream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/fanout"
	"github.com/replproxy/replproxy/internal/periodic"
	"github.com/replproxy/replproxy/resp"
)

// RefreshConfig says when the snapshot is renewed.
type RefreshConfig struct {
	// AfterBytes of stream since the snapshot trigger a refresh, well before
	// retention would trim the bytes that must follow it.
	AfterBytes  int64
	MinInterval time.Duration // at most one refresh per interval, unless a replica waits
	// HoldTimeout bounds the wait for the main link to reach the new RDB's
	// offset before it can be adopted.
	HoldTimeout time.Duration
	// MaxPerHour bounds the refreshes (master forks) in any hour, whoever
	// asks for them.
	MaxPerHour int
}

// Refresh backoff after failed or unusable refreshes: 2s, doubling, at
// most 5 minutes. It applies even when a replica waits, so a master that
// cannot serve rdb-only is not asked again at once.
const (
	refreshBackoffMin = 2 * time.Second
	refreshBackoffMax = 5 * time.Minute
	// demandFresh: waiting replicas renew their demand every second; one
	// older than this belongs to a replica that left.
	demandFresh = 5 * time.Second
	// fallbackAfter consecutive failures while a replica waits for a
	// snapshot the backlog no longer continues, the main link full-syncs.
	fallbackAfter = 3
	// urgentFloor is the least time between two refreshes, even when
	// replicas wait: at most six forks a minute, whoever asks.
	urgentFloor = 10 * time.Second
)

// errRDBOnlyRefused means the upstream cannot serve rdb-only transfers at
// all (Redis before 6.2, or an ACL): retrying is pointless.
var errRDBOnlyRefused = errors.New("upstream refuses rdb-only transfers")

// errUnusable marks a snapshot offered by the upstream that this proxy
// could not adopt; it is refused before its RDB crosses the link.
var errUnusable = errors.New("unusable snapshot")

// Refresher renews the snapshot over a second connection with
// REPLCONF rdb-only 1, so the main link never stops streaming. It is the
// only goroutine that refreshes: concurrent demands share one transfer.
type Refresher struct {
	link   *Link
	cfg    RefreshConfig
	demand chan struct{}
	// want is the oldest snapshot offset a waiting replica can use, and
	// wantAt when it last asked (unix nanoseconds); wantMu orders Need's
	// read and update of the pair.
	wantMu sync.Mutex
	want   atomic.Int64
	wantAt atomic.Int64
	// Read by the wiring (INFO, metrics, progress); written here only.
	Bytes     Transfer
	Refreshes atomic.Int64
	Failures  atomic.Int64
	Fallbacks atomic.Int64
	Refused   atomic.Int64 // due refreshes held back by MaxPerHour, once per wait

	rec         backlog.RefreshRecord // owned by run
	noSpace     bool                  // the last refresh due was held for space (logged once); owned by run
	refusedTill time.Time             // owned by run: the refusal in force was counted
}

func NewRefresher(l *Link, cfg RefreshConfig) *Refresher {
	return &Refresher{link: l, cfg: cfg, demand: make(chan struct{}, 1)}
}

// Need asks for a snapshot at minOffset or later: a replica waits for one
// the backlog continues, or a downstream replproxy asked for a newer one.
// A demand lasts while replicas renew it: once none has for demandFresh,
// the next one replaces it rather than raising it, so an offset asked for
// by a replica that left, or in the offsets of a master no longer
// followed, is not asked for again.
func (r *Refresher) Need(minOffset int64) {
	r.wantMu.Lock()
	stale := time.Since(time.Unix(0, r.wantAt.Load())) >= demandFresh
	if stale || minOffset > r.want.Load() {
		r.want.Store(minOffset)
	}
	r.wantAt.Store(time.Now().UnixNano())
	r.wantMu.Unlock()
	select {
	case r.demand <- struct{}{}:
	default:
	}
}

func (r *Refresher) Run(ctx context.Context) {
	rec, err := r.link.store.LoadRefreshRecord()
	if err != nil {
		r.link.log.Warn().Err(err).Msg("snapshot refresh record unreadable; counting it as a refresh just now")
	}
	r.rec = rec
	periodic.Run(ctx, time.Second, r.demand, func(time.Time) {
		reason, urgent := r.due()
		if reason == "" || time.Now().Before(r.nextAllowed(urgent)) || !r.roomForRDB() || r.overHourlyCap(reason) {
			return
		}
		r.refresh(ctx, reason, urgent)
	})
}

// nextAllowed is the earliest time of the next attempt. min_interval holds
// across restarts, since the last attempt is persisted; a waiting replica
// is served without it, but never faster than the failure backoff.
func (r *Refresher) nextAllowed(urgent bool) time.Time {
	wait := backoff(r.rec.Failures)
	if urgent {
		// A waiting replica skips min_interval, but not this floor: any
		// replica-role client can ask for a snapshot, and each refresh forks
		// the master the proxy exists to shield.
		wait = max(wait, min(urgentFloor, r.cfg.MinInterval))
	} else {
		wait = max(wait, r.cfg.MinInterval)
	}
	return r.rec.LastAttempt.Add(wait)
}

// overHourlyCap says whether MaxPerHour refreshes already started in the
// last hour. Each refusal is counted and logged once, when it begins: the
// demand is renewed every second while a replica waits.
func (r *Refresher) overHourlyCap(reason string) bool {
	now := time.Now()
	kept := r.rec.Attempts[:0]
	for _, t := range r.rec.Attempts {
		// A time in the future (a clock set back) still counts, for an hour.
		if now.Sub(t) < time.Hour {
			kept = append(kept, t)
		}
	}
	r.rec.Attempts = kept
	if r.cfg.MaxPerHour <= 0 || len(kept) < r.cfg.MaxPerHour {
		return false
	}
	until := kept[len(kept)-r.cfg.MaxPerHour].Add(time.Hour)
	if !until.Equal(r.refusedTill) {
		r.refusedTill = until
		r.Refused.Add(1)
		r.link.log.Warn().Str("reason", reason).Int("max_refreshes_per_hour", r.cfg.MaxPerHour).Time("next_allowed", until).
			Msg("snapshot refresh refused: snapshot.max_refreshes_per_hour refreshes (master forks) already started in the last hour; replicas waiting for a newer snapshot wait until then")
	}
	return true
}

func backoff(failures int) time.Duration {
	if failures == 0 {
		return 0
	}
	if failures > 10 {
		return refreshBackoffMax
	}
	return min(refreshBackoffMin<<(failures-1), refreshBackoffMax)
}

// due says why a refresh is needed now, or "", and whether a replica waits
// for it.
func (r *Refresher) due() (reason string, urgent bool) {
	st := r.link.store.State()
	// A forced full resync brings a new snapshot of its own.
	if !st.HasHistory || r.link.forceFull.Load() || r.link.LinkStatus().State != fanout.LinkConnected {
		return "", false
	}
	since := st.End - 1 - st.Snapshot.Offset
	wanted := time.Since(time.Unix(0, r.wantAt.Load())) < demandFresh && r.want.Load() > st.Snapshot.Offset
	switch {
	case wanted:
		return fmt.Sprintf("a replica waits for a snapshot at offset %d or later", r.want.Load()), true
	case st.Snapshot.Offset+1 < st.First:
		return "snapshot is older than the backlog", false
	case r.cfg.AfterBytes > 0 && since >= r.cfg.AfterBytes:
		return fmt.Sprintf("%d bytes of stream since the snapshot", since), false
	}
	return "", false
}

func (r *Refresher) refresh(ctx context.Context, reason string, urgent bool) {
	log := r.link.log.With().Str("reason", reason).Logger()
	// The attempt is recorded before the master forks for it, so that a
	// crash during the transfer still counts against min_interval.
	r.rec.LastAttempt = time.Now()
	r.rec.Attempts = append(r.rec.Attempts, r.rec.LastAttempt)
	r.save()
	log.Info().Msg("snapshot refresh starting (rdb-only transfer on a second connection)")
	start := time.Now()
	offset, size, err := r.fetch(ctx)
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		r.Failures.Add(1)
		r.rec.Failures++
		r.save()
		log.Warn().Err(err).Int("consecutive_failures", r.rec.Failures).Dur("next_attempt_in", backoff(r.rec.Failures)).
			Msg("snapshot refresh failed; the current snapshot stays")
		r.maybeFallback(urgent, err)
		return
	}
	r.rec.Failures = 0
	r.save()
	r.Refreshes.Add(1)
	log.Info().Int64("offset", offset).Int64("rdb_bytes", size).Dur("duration_ms", time.Since(start)).
		Msg("snapshot refreshed")
}

func (r *Refresher) save() {
	if err := r.link.store.SaveRefreshRecord(r.rec); err != nil {
		r.link.log.Warn().Err(err).Msg("cannot persist the snapshot refresh record; min_interval may not hold across a restart")
	}
}

// maybeFallback falls back to a full resync on the main link when a
// replica waits for a snapshot the backlog no longer continues and
// rdb-only cannot provide one: the only other way to a usable snapshot.
func (r *Refresher) maybeFallback(urgent bool, err error) {
	st := r.link.store.State()
	if !urgent || !st.HasHistory || st.Snapshot.Offset+1 >= st.First {
		return
	}
	if !errors.Is(err, errRDBOnlyRefused) && r.rec.Failures < fallbackAfter {
		return
	}
	r.Fallbacks.Add(1)
	// The full sync brings a fresh snapshot: the next time one is needed,
	// rdb-only is tried again at once (it is refused before any fork).
	r.rec.Failures = 0
	r.save()
	r.link.log.Warn().Err(err).Int64("snapshot_offset", st.Snapshot.Offset).Int64("backlog_first", st.First).
		Msg("a replica waits, the snapshot is past retention and a refresh is impossible: falling back to a full resync on the main link")
	r.link.ForceFullSync("snapshot refresh impossible: " + err.Error())
}

func (r *Refresher) fetch(ctx context.Context) (offset, size int64, err error) {
	l := r.link
	raw, err := l.dial(ctx, l.Addr())
	if err != nil {
		return 0, 0, fmt.Errorf("connect: %w", err)
	}
	var lastIO atomic.Int64
	conn := &watchedConn{Conn: raw, timeout: l.cfg.ReplTimeout, lastIO: &lastIO}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	rd := resp.NewReader(bufio.NewReaderSize(conn, 64<<10), resp.DefaultLimits())
	if err := l.handshake(conn, rd, true); err != nil {
		return 0, 0, err
	}
	need := r.needOffset()
	replid, offset, err := requestFullSync(conn, rd, need)
	if err != nil {
		return 0, 0, err
	}
	if err := r.usable(replid, offset); err != nil {
		return 0, 0, err
	}
	w, err := l.store.NewSnapshot()
	if err != nil {
		return 0, 0, err
	}
	r.Bytes.begin()
	defer r.Bytes.end()
	if _, err := receiveRDB(rd, w, &r.Bytes); err != nil {
		w.Abort()
		return 0, 0, fmt.Errorf("receive RDB: %w", err)
	}
	conn.Close() // an rdb-only transfer is over once the RDB is in
	if _, err := checkRDB(w.Path(), offset); err != nil {
		w.Abort()
		return 0, 0, err
	}
	if err := r.waitForOffset(ctx, offset); err != nil {
		w.Abort()
		return 0, 0, err
	}
	size = w.Size()
	return offset, size, l.store.AdoptSnapshot(replid, offset, w)
}

// needOffset is the oldest snapshot worth fetching: newer than the one
// held, and in the newer half of the retained stream so it stays usable
// for a while. An upstream replproxy refreshes its own first if needed;
// Redis ignores the number.
func (r *Refresher) needOffset() int64 {
	st := r.link.store.State()
	need := max(st.Snapshot.Offset+1, st.First-1+(st.End-st.First)/2)
	if time.Since(time.Unix(0, r.wantAt.Load())) < demandFresh {
		need = max(need, r.want.Load())
	}
	return need
}

// usable refuses, from the +FULLRESYNC line alone, a snapshot that could
// never be adopted, so its RDB does not cross the link for nothing.
func (r *Refresher) usable(replid string, offset int64) error {
	st := r.link.store.State()
	switch {
	case !strings.EqualFold(replid, st.ReplID):
		return fmt.Errorf("%w: upstream offers replid %s, this proxy follows %s", errUnusable, replid, st.ReplID)
	case offset <= st.Snapshot.Offset:
		return fmt.Errorf("%w: upstream offers offset %d, not newer than the stored %d (an upstream replproxy without the refresh capability serves its own)", errUnusable, offset, st.Snapshot.Offset)
	case offset+1 < st.First:
		return fmt.Errorf("%w: upstream offers offset %d, older than the backlog's first byte %d", errUnusable, offset, st.First)
	}
	return nil
}

// requestFullSync sends PSYNC ? <need>. Redis reads "?" as a forced full
// sync whatever the offset; a replproxy that saw capa replproxy-refresh
// reads the offset as the oldest snapshot the requester can use.
func requestFullSync(conn net.Conn, rd *resp.Reader, need int64) (string, int64, error) {
	if _, err := conn.Write(resp.AppendCommand(nil, "PSYNC", "?", strconv.FormatInt(max(need, 1), 10))); err != nil {
		return "", 0, fmt.Errorf("send PSYNC: %w", err)
	}
	line, err := readReply(rd)
	if err != nil {
		return "", 0, fmt.Errorf("read PSYNC reply: %w", err)
	}
	fields := strings.Fields(line)
	if len(fields) != 3 || fields[0] != "+FULLRESYNC" || len(fields[1]) != 40 {
		return "", 0, fmt.Errorf("unexpected PSYNC reply %q", line)
	}
	off, err := strconv.ParseInt(fields[2], 10, 64)
	if err != nil {
		return "", 0, fmt.Errorf("bad offset in %q", line)
	}
	return fields[1], off, nil
}

// waitForOffset waits until the main link has stored the stream up to the
// RDB's offset: only then does the backlog continue it.
func (r *Refresher) waitForOffset(ctx context.Context, offset int64) error {
	deadline := time.Now().Add(r.cfg.HoldTimeout)
	for {
		st, lg := r.link.store.View()
		if st.End-1 >= offset {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("main link did not reach offset %d within %s (at %d)", offset, r.cfg.HoldTimeout, st.End-1)
		}
		var changed <-chan struct{}
		if lg != nil {
			changed = lg.Changed()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		case <-time.After(100 * time.Millisecond):
		}
	}
}
