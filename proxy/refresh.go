package proxy

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/replproxy/replproxy/resp"
)

// RefreshConfig says when the snapshot is renewed.
type RefreshConfig struct {
	// AfterBytes of stream since the snapshot trigger a refresh, well before
	// retention would trim the bytes that must follow it.
	AfterBytes  int64
	MinInterval time.Duration // at most one refresh per interval
	// HoldTimeout bounds the wait for the main link to reach the new RDB's
	// offset before it can be adopted.
	HoldTimeout time.Duration
}

// refresher renews the snapshot over a second connection with
// REPLCONF rdb-only 1, so the main link never stops streaming.
type refresher struct {
	link   *Link
	cfg    RefreshConfig
	demand chan struct{}
	bytes  transfer
	count  atomic.Int64
	failed atomic.Int64
}

func newRefresher(l *Link, cfg RefreshConfig) *refresher {
	return &refresher{link: l, cfg: cfg, demand: make(chan struct{}, 1)}
}

// Need asks for a refresh: a replica waits for a snapshot the backlog no
// longer continues.
func (r *refresher) Need() {
	select {
	case r.demand <- struct{}{}:
	default:
	}
}

func (r *refresher) run(ctx context.Context) {
	var last time.Time
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		demanded := false
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-r.demand:
			demanded = true
		}
		reason := r.due(demanded)
		if reason == "" || time.Since(last) < r.cfg.MinInterval {
			continue
		}
		last = time.Now()
		r.refresh(ctx, reason)
	}
}

// due says why a refresh is needed now, or "".
func (r *refresher) due(demanded bool) string {
	st := r.link.store.State()
	if !st.HasHistory || r.link.LinkStatus().State != LinkConnected {
		return ""
	}
	since := st.End - 1 - st.Snapshot.Offset
	switch {
	case st.Snapshot.Offset+1 < st.First:
		return "snapshot is older than the backlog"
	case demanded:
		return "a replica needs a full sync"
	case r.cfg.AfterBytes > 0 && since >= r.cfg.AfterBytes:
		return fmt.Sprintf("%d bytes of stream since the snapshot", since)
	}
	return ""
}

func (r *refresher) refresh(ctx context.Context, reason string) {
	log := r.link.log.With().Str("reason", reason).Logger()
	log.Info().Msg("snapshot refresh starting (rdb-only transfer on a second connection)")
	start := time.Now()
	offset, size, err := r.fetch(ctx)
	if err != nil {
		r.failed.Add(1)
		log.Warn().Err(err).Msg("snapshot refresh failed; the current snapshot stays")
		return
	}
	r.count.Add(1)
	log.Info().Int64("offset", offset).Int64("rdb_bytes", size).Dur("duration_ms", time.Since(start)).
		Msg("snapshot refreshed")
}

func (r *refresher) fetch(ctx context.Context) (offset, size int64, err error) {
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
	replid, offset, err := requestFullSync(conn, rd)
	if err != nil {
		return 0, 0, err
	}
	w, err := l.store.NewSnapshot()
	if err != nil {
		return 0, 0, err
	}
	r.bytes.begin()
	defer r.bytes.end()
	if _, err := receiveRDB(rd, w, &r.bytes); err != nil {
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

func requestFullSync(conn net.Conn, rd *resp.Reader) (string, int64, error) {
	if _, err := conn.Write(resp.AppendCommand(nil, "PSYNC", "?", "-1")); err != nil {
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
func (r *refresher) waitForOffset(ctx context.Context, offset int64) error {
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
