// Package upstream is the proxy's replica side: the link to the master
// (handshake, full or partial sync, the stream into the backlog, ACKs) and
// the refresher that renews the snapshot over a second connection. The
// README's "How a byte flows" follows the stream through it.
package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/fanout"
	"github.com/replproxy/replproxy/resp"
)

// Config configures the upstream link.
type Config struct {
	Addr           string
	User           string
	Password       string
	ListenPort     int           // announced with REPLCONF listening-port
	ReplTimeout    time.Duration // no byte from the master for this long drops the link
	ConnectTimeout time.Duration
	BackoffMin     time.Duration
	BackoffMax     time.Duration
	AckMode        AckMode
	AckQuorum      int                                    // with AckReplicas: acknowledge the AckQuorum-th highest replica ACK (0: all replicas)
	TLS            func(addr string) (*tls.Config, error) // nil: plain TCP
	// Codecs ask the master, if it is a replproxy, for a compressed
	// stream, best first (see AskedCodecs).
	Codecs []string
	// DataDir and SegmentBytes size the free space a session needs: the
	// link waits for it rather than PSYNC into a full disk (diskspace.go).
	DataDir      string
	SegmentBytes int64
	// spaceEvery is set by tests only; 0: spaceCheckEvery.
	spaceEvery time.Duration
}

// Downstream is what the link needs of the replicas below the proxy: to
// drop them when their history changes, and their acknowledgements.
type Downstream interface {
	DropAll(reason string)
	AckQuorum(n int) (int64, bool)
	AckChanged() <-chan struct{}
}

// AckMode is what the proxy acknowledges to its master.
type AckMode string

const (
	AckStored   AckMode = "stored"   // what the proxy has stored, durable under the fsync policy
	AckReplicas AckMode = "replicas" // what the downstream replicas have acknowledged (quorum), so WAIT stays honest
)

// Link is the proxy's replica-side connection to its master. It is the only
// writer of the store.
type Link struct {
	cfg   Config
	store *backlog.Store
	fan   Downstream
	log   zerolog.Logger

	mu      sync.Mutex
	status  fanout.LinkStatus
	addr    string                  // the master now; Repoint changes it
	endSess context.CancelCauseFunc // ends the current session, for a repoint
	repoint chan struct{}           // wakes Run from its backoff
	down    chan struct{}           // signalled when a streaming link breaks
	waiting diskWait                // the wait for space in the data dir, if any

	// forceFull makes the next PSYNC ask for a full sync: the fallback
	// when the snapshot cannot be refreshed over rdb-only.
	forceFull   atomic.Bool
	connectedAt atomic.Int64 // unix nanoseconds of the last transition to connected
	awaitStream atomic.Int64 // after a full sync, its offset until the first stream byte; -1 otherwise
	lastIO      atomic.Int64 // unix nanoseconds
	// Read by the wiring (INFO, metrics, progress); written here only.
	FullSyncs    atomic.Int64
	PartialSyncs atomic.Int64
	Sync         Transfer // the RDB of an upstream full sync
	LastAck      Ack
	WireBytes    atomic.Int64 // read from the master's socket
	RawBytes     atomic.Int64 // RDB and stream bytes those carried (more when compressed)
	rdbNeed      atomic.Int64 // room the last full sync's RDB lacked (diskspace.go); 0: none

	park     parking        // a planned failover keeps the link off the old master
	Failover *FailoverTimes // how soon a promotion was followed
}

// NewLink returns a link; Run drives it.
func NewLink(cfg Config, store *backlog.Store, fan Downstream, log zerolog.Logger) *Link {
	host, portStr, _ := net.SplitHostPort(cfg.Addr)
	port, _ := strconv.Atoi(portStr)
	l := &Link{cfg: cfg, store: store, fan: fan, log: log, addr: cfg.Addr, repoint: make(chan struct{}, 1), down: make(chan struct{}, 1)}
	l.Failover = newFailoverTimes()
	l.awaitStream.Store(-1)
	l.status = fanout.LinkStatus{MasterHost: host, MasterPort: port, State: fanout.LinkConnect, DownSince: time.Now()}
	return l
}

// Addr is the master the link follows now.
func (l *Link) Addr() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.addr
}

// Repoint moves the link to another master, as REPLICAOF does on a Redis
// replica: the next PSYNC offers the proxy's own replid and offset, so a
// promoted replica of the old master accepts it partially. It reports
// whether anything changed.
func (l *Link) Repoint(addr, why string) bool {
	host, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	l.mu.Lock()
	if addr == l.addr {
		l.mu.Unlock()
		return false
	}
	old := l.addr
	l.addr = addr
	l.status.MasterHost, l.status.MasterPort = host, port
	end := l.endSess
	l.mu.Unlock()
	l.log.Info().Str("from", old).Str("to", addr).Str("reason", why).Msg("upstream master changed")
	if end != nil {
		end(errRepointed)
	}
	select {
	case l.repoint <- struct{}{}:
	default:
	}
	// A park keeps the link off the old master only: another one is
	// followed at once (REPLICAOF answered OK means now). Last, so that
	// the parked Run drains the wake-up above as it resumes.
	l.Unpark(why)
	return true
}

// Down is signalled when a streaming link breaks, so that a watcher of
// the topology can look for a new master at once.
func (l *Link) Down() <-chan struct{} { return l.down }

// errRepointed ends a session because the master changed, not because it failed.
var errRepointed = errors.New("repointed")

// errForcedFullSync ends a session so that the next one full-syncs.
var errForcedFullSync = errors.New("full resync requested")

// ForceFullSync ends the current session; the next one asks the master
// for a full sync instead of continuing, and starts a new history.
func (l *Link) ForceFullSync(why string) {
	l.forceFull.Store(true)
	l.mu.Lock()
	end := l.endSess
	l.mu.Unlock()
	l.log.Warn().Str("reason", why).Msg("upstream full resync forced")
	if end != nil {
		end(errForcedFullSync)
	}
}

// LinkStatus implements fanout.Upstream.
func (l *Link) LinkStatus() fanout.LinkStatus {
	l.mu.Lock()
	st := l.status
	l.mu.Unlock()
	if n := l.lastIO.Load(); n > 0 {
		st.LastIO = time.Unix(0, n)
	}
	st.SyncBytes = l.Sync.Done.Load()
	st.SyncTotal = l.Sync.Total.Load()
	return st
}

// Stats returns the link's counters for INFO stats.
func (l *Link) Stats() []fanout.KV {
	return append([]fanout.KV{
		{Key: "upstream_full_syncs", Value: l.FullSyncs.Load()},
		{Key: "upstream_partial_syncs", Value: l.PartialSyncs.Load()},
		{Key: "upstream_wire_bytes", Value: l.WireBytes.Load()},
		{Key: "upstream_stream_bytes", Value: l.RawBytes.Load()},
	}, l.Failover.stats()...)
}

// setState records and logs a transition with its reason, as replication.c does.
func (l *Link) setState(state fanout.LinkState, reason string) {
	l.mu.Lock()
	prev := l.status.State
	l.status.State = state
	switch {
	case state == fanout.LinkConnected:
		l.status.DownSince = time.Time{}
		l.connectedAt.Store(time.Now().UnixNano())
	case prev == fanout.LinkConnected:
		l.status.DownSince = time.Now()
		select {
		case l.down <- struct{}{}:
		default:
		}
	}
	l.mu.Unlock()
	if prev != state {
		l.log.Info().Str("master", l.Addr()).Stringer("from", prev).Stringer("to", state).Str("reason", reason).Msg("upstream link state")
	}
}

// Run keeps the link up until ctx ends, reconnecting at once after a
// repoint, within BackoffMin after a healthy session (a Redis replica
// retries every second), and with doubling backoff after failures. A
// session is healthy when it stored bytes, or streamed until the master's
// side ended it (an idle master sends nothing for seconds); one that ended
// on a disk error is a failure whatever it stored, and no session starts
// while the data dir lacks room for it (awaitSpace).
func (l *Link) Run(ctx context.Context) {
	backoff := l.cfg.BackoffMin
	var failures int // attempts since the last one that streamed
	for ctx.Err() == nil {
		l.waitUnparked(ctx)
		l.awaitSpace(ctx)
		if ctx.Err() != nil {
			break
		}
		stored, connected := l.RawBytes.Load(), l.connectedAt.Load()
		sctx, end := context.WithCancelCause(ctx)
		l.mu.Lock()
		l.endSess = end
		l.mu.Unlock()
		err := l.session(sctx)
		cause := context.Cause(sctx)
		end(nil)
		if ctx.Err() != nil {
			break
		}
		if cause == nil && errors.Is(err, errParked) {
			cause = errParked // the session saw the park before it could be ended
		}
		if errors.Is(cause, errRepointed) || errors.Is(cause, errForcedFullSync) || errors.Is(cause, errParked) {
			l.setState(fanout.LinkConnect, cause.Error()+", master "+l.Addr())
			backoff = l.cfg.BackoffMin
			select { // the repoint is handled: no wake-up left for later
			case <-l.repoint:
			default:
			}
			continue
		}
		l.setState(fanout.LinkConnect, err.Error())
		healthy := l.RawBytes.Load() != stored || l.connectedAt.Load() != connected
		wait, next := l.nextBackoff(backoff, err, healthy)
		if l.connectedAt.Load() != connected {
			failures = 0
		} else {
			failures++
			l.warnFailed(err, failures, wait)
		}
		select {
		case <-ctx.Done():
			return
		case <-l.repoint:
			backoff = l.cfg.BackoffMin
			continue
		case <-time.After(wait):
		}
		backoff = next
	}
	l.setState(fanout.LinkConnect, "shutting down")
}

// nextBackoff returns the wait before the next session and the backoff
// after it. A disk error keeps the backoff growing, to diskBackoffMax,
// however well the session went before it, and a full disk waits at least
// one space check.
func (l *Link) nextBackoff(backoff time.Duration, err error, healthy bool) (wait, next time.Duration) {
	disk := isDiskError(err)
	if healthy && !disk {
		backoff = l.cfg.BackoffMin // the link was healthy: this is no failure streak
	}
	wait, limit := backoff, l.cfg.BackoffMax
	if disk {
		limit = max(limit, diskBackoffMax)
	}
	if isDiskFull(err) {
		wait = max(wait, spaceCheckEvery)
	}
	return wait, min(max(wait, backoff)*2, limit)
}

// warnFailed logs an attempt that never reached the stream: an operator
// must see a master that refuses or cannot be reached, and how long that
// has lasted, without reading every state change.
func (l *Link) warnFailed(err error, failures int, retryIn time.Duration) {
	ev := l.log.Warn().Err(err).Str("master", l.Addr()).Int("failures_since_last_success", failures).Dur("retry_in", retryIn)
	if at := l.connectedAt.Load(); at > 0 {
		ev = ev.Time("last_success", time.Unix(0, at))
	}
	ev.Msg("connection to the master failed")
}

// session is one connection's life: handshake, sync, stream.
func (l *Link) session(ctx context.Context) error {
	addr := l.Addr()
	if l.parked() { // parked after Run looked, before this session could be ended
		return errParked
	}
	l.awaitStream.Store(-1)
	l.setState(fanout.LinkConnecting, "dialing "+addr)
	raw, err := l.dial(ctx, addr)
	if err != nil {
		return fmt.Errorf("connect to master %s: %w", addr, err)
	}
	conn := &watchedConn{Conn: raw, timeout: l.cfg.ReplTimeout, lastIO: &l.lastIO, wire: &l.WireBytes}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	br := bufio.NewReaderSize(conn, 64<<10)
	rd := resp.NewReader(br, resp.DefaultLimits())
	l.setState(fanout.LinkHandshake, "connected to "+addr)
	if err := l.handshake(conn, rd, false); err != nil {
		return err
	}
	rd, err = l.psync(conn, rd)
	if err != nil {
		return err
	}
	l.setState(fanout.LinkConnected, "replication stream started")
	return l.stream(ctx, conn, rd.Bufio(), rd.Bufio() == br)
}

// dial connects to the master, with TLS when configured.
func (l *Link) dial(ctx context.Context, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: l.cfg.ConnectTimeout}
	if l.cfg.TLS == nil {
		return d.DialContext(ctx, "tcp", addr)
	}
	tcfg, err := l.cfg.TLS(addr)
	if err != nil {
		return nil, err
	}
	td := tls.Dialer{NetDialer: &d, Config: tcfg}
	return td.DialContext(ctx, "tcp", addr)
}

// watchedConn gives every read the repl-timeout deadline and records the
// time of the last byte, so a silent master is detected like Redis does.
type watchedConn struct {
	net.Conn
	timeout time.Duration
	lastIO  *atomic.Int64
	wire    *atomic.Int64 // nil: not counted
}

func (c *watchedConn) Read(p []byte) (int, error) {
	c.Conn.SetReadDeadline(time.Now().Add(c.timeout))
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.lastIO.Store(time.Now().UnixNano())
		if c.wire != nil {
			c.wire.Add(int64(n))
		}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		err = fmt.Errorf("no data from master for %s (repl-timeout): %w", c.timeout, err)
	}
	return n, err
}

// Write gives every write the repl-timeout deadline, so a master that stops
// reading fails the ACK instead of blocking it. It takes no lock: writes come
// from one goroutine at a time (the session, the keepalive it stops and
// waits for, then ackLoop alone, which sends both the ticker's ACKs and the
// GETACK answers), and a net.Conn serializes concurrent writes anyway.
func (c *watchedConn) Write(p []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
	return c.Conn.Write(p)
}

// noteRead records n bytes read past the conn's own Read.
func (c *watchedConn) noteRead(n int) {
	c.lastIO.Store(time.Now().UnixNano())
	if c.wire != nil {
		c.wire.Add(int64(n))
	}
}
