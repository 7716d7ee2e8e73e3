package fanout

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/rdbconvert"
	"github.com/replproxy/replproxy/resp"
)

// ReplicaInfo is one replica as INFO and metrics show it.
type ReplicaInfo struct {
	ID        int64
	IP        string // as announced (REPLCONF ip-address), else PeerIP
	Port      int
	State     ReplicaState
	AckOffset int64
	AckTime   time.Time
	SentOff   int64 // next offset the sender will send
	SentBytes int64
	Since     time.Time
	Version   string // announced with REPLCONF version (Valkey); "" if not
	Codec     string // the stream's compression codec; "" if plain
	// WaitReason says why a replica in wait_bgsave has no snapshot yet
	// ("" once it has one); WaitSince is when that wait began.
	WaitReason string
	WaitSince  time.Time
	// PeerIP is the address the replica connects from, whatever it
	// announced.
	PeerIP string
	// Watched says the stream is scanned for commands the replica's
	// server does not know (its format is older than the master's);
	// UnknownCommands counts those relayed in this session.
	Watched         bool
	UnknownCommands int64
}

// AnnouncedOwnAddress says whether the replica announced no address or the
// one it connects from: only then may its address be handed to others
// (the cluster slot map), since any replica-role client may announce any
// address with REPLCONF ip-address.
func (ri ReplicaInfo) AnnouncedOwnAddress() bool {
	a, p := net.ParseIP(ri.IP), net.ParseIP(ri.PeerIP)
	return a != nil && p != nil && a.Equal(p)
}

type replica struct {
	id       int64
	srv      *Server
	conn     net.Conn
	log      zerolog.Logger
	ip       string
	peerIP   string // the address it connects from
	port     int
	capaEOF  bool
	psync2   bool
	rdbOnly  bool
	prePsync bool // plain SYNC: no +FULLRESYNC line, no ACKs
	refresh  bool // a downstream replproxy refreshing its snapshot
	noData   bool // REPLCONF rdb-filter-only "": an empty RDB at the current offset
	codec    string
	version  string
	// userFormat is the RDB format its user's config names (zero: none).
	userFormat rdbconvert.Format
	since      time.Time
	// need is the lowest snapshot offset a downstream replproxy asked for
	// with the refresh capability (0: any usable snapshot).
	need int64

	// out carries everything after the PSYNC reply: the connection, or,
	// for a peer replproxy that asked for a codec and got it, a
	// compressing encoder on it.
	out io.Writer
	cw  *compressedWriter

	state     atomic.Uint32 // a ReplicaState; changed only by setState
	ackOff    atomic.Int64
	ackTime   atomic.Int64 // unix nanoseconds
	sentOff   atomic.Int64
	sentBytes atomic.Int64
	// maxAck is the highest offset the replica can have received: raised
	// before each send, lowered to what went out after it. An ACK above
	// it is a lie (or a bug) that would make WAIT count unsent writes.
	maxAck   atomic.Int64
	wait     atomic.Pointer[waitState] // nil unless waiting for a snapshot
	pinnedAt atomic.Int64              // unix nanoseconds since its position left retention; 0: not pinning
	cancel   context.CancelCauseFunc
	limiter  *rate.Limiter // nil: no rate limit

	// memOut sends the stream bytes held in memory: out.Write, or
	// memoryWriter.send on sock, a plain socket (nil: TLS or zstd); full
	// says its last write was short: the next send waits, from the file.
	memOut func([]byte) (int, error)
	sock   syscall.RawConn
	full   bool
	// fedByWriter says a compressed replica is parked with the writer
	// (followCompressed), which tests wait for.
	fedByWriter atomic.Bool

	// watch scans the stream for commands the replica does not know (nil:
	// none to look for); only the sender uses it.
	watch       *cmdWatch
	watched     atomic.Bool
	unknownCmds atomic.Int64
}

// waitState is why and since when a replica waits for a snapshot.
type waitState struct {
	reason string
	since  time.Time
}

// chunk is the most one send may carry: small enough to notice
// cancellation, and within one burst of the rate limit.
func (r *replica) chunk() int64 {
	if r.limiter != nil {
		return min(r.srv.cfg.chunkBytes, int64(r.limiter.Burst()))
	}
	return r.srv.cfg.chunkBytes
}

// pace pays for n bytes already sent, so the average rate holds with at
// most one burst ahead, whatever the size of each send.
func (r *replica) pace(ctx context.Context, n int64) error {
	if r.limiter == nil || n == 0 {
		return nil
	}
	if err := r.limiter.WaitN(ctx, int(n)); err != nil {
		return context.Cause(ctx)
	}
	return nil
}

func (r *replica) info() ReplicaInfo {
	ri := ReplicaInfo{
		ID: r.id, IP: r.ip, Port: r.port, State: ReplicaState(r.state.Load()),
		AckOffset: r.ackOff.Load(), AckTime: time.Unix(0, r.ackTime.Load()),
		SentOff: r.sentOff.Load(), SentBytes: r.sentBytes.Load(), Since: r.since, Version: r.version, Codec: r.codec,
	}
	if w := r.wait.Load(); w != nil {
		ri.WaitReason, ri.WaitSince = w.reason, w.since
	}
	ri.PeerIP = r.peerIP
	ri.Watched, ri.UnknownCommands = r.watched.Load(), r.unknownCmds.Load()
	return ri
}

func (r *replica) drop(reason string) {
	r.cancel(errors.New(reason))
	r.conn.Close()
}

type psyncRequest struct {
	replid string
	offset int64
}

func (c *client) startReplica(ctx context.Context, cmd string, args [][]byte) outcome {
	if len(c.channels) > 0 || c.inExec {
		c.out = resp.AppendError(c.out, "ERR "+strings.ToUpper(cmd)+" is not allowed in subscribe mode or inside MULTI")
		return keepConn
	}
	var req *psyncRequest
	if cmd == "psync" {
		if len(args) == 4 && strings.EqualFold(string(args[3]), "failover") {
			// A master running FAILOVER (with no TO, it picks any replica
			// that has caught up) asks its target to become master; it
			// aborts the failover on this error and stays master.
			c.log.Warn().Msg("refused PSYNC FAILOVER: the proxy holds no data and cannot be promoted")
			c.out = resp.AppendError(c.out, "ERR replproxy holds no data and cannot be promoted to master: PSYNC FAILOVER is refused; use FAILOVER TO <a Redis replica>")
			return keepConn
		}
		if len(args) != 3 {
			c.wrongArgs("psync")
			return keepConn
		}
		off, err := strconv.ParseInt(string(args[2]), 10, 64)
		if err != nil {
			c.out = resp.AppendError(c.out, "ERR value is not an integer or out of range")
			return keepConn
		}
		req = &psyncRequest{replid: string(args[1]), offset: off}
	}
	if c.rdbNoData && !c.capaEOF {
		// As Redis 7.0+ answers: a filtered RDB needs the EOF capability.
		c.out = resp.AppendError(c.out, "ERR Filtered replica requires EOF capability")
		return keepConn
	}
	r := c.newReplica(cmd == "sync")
	r.refresh = c.capaRefresh && c.user.mayRefresh()
	if c.capaRefresh && !c.user.mayRefresh() {
		// Served as any replica: the stored snapshot, and a wait only
		// when the proxy itself needs a newer one.
		c.log.Info().Str("user", c.user.Name).Str("role", string(c.user.Role)).
			Msg("capa " + CapaRefresh + " ignored: only the proxy and admin roles may ask for a newer snapshot, which forks the master")
	} else if req != nil && c.capaRefresh && c.rdbOnly && req.replid == "?" && req.offset > 0 {
		// The requester follows this proxy, so the most it needs is a
		// snapshot one byte past the stream it holds, which is never past
		// the stream held here. One that asks for more could only wait in
		// a full-sync slot and have the refresher fetch for nothing.
		if st := c.srv.cfg.Store.State(); st.HasHistory && req.offset > st.End {
			c.out = resp.AppendError(c.out, fmt.Sprintf("ERR replproxy: no snapshot at or after offset %d can be served: the stream here ends at %d", req.offset, st.MasterReplOffset()))
			return keepConn
		}
		r.need = req.offset
	}
	// Fully built before it is registered: DropAll may cancel it at once.
	rctx, cancel := context.WithCancelCause(ctx)
	r.cancel = cancel
	c.srv.addReplica(r)
	defer c.srv.removeReplica(r)
	senderDone := make(chan error, 1)
	go func() { senderDone <- r.serve(rctx, req) }()
	readErr := c.readAcks(r)
	cancel(fmt.Errorf("%w: %w", errReplicaGone, readErr))
	r.conn.Close()
	sendErr := <-senderDone
	r.log.Info().Str("reason", detachReason(rctx, sendErr, readErr)).Int64("ack_offset", r.ackOff.Load()).
		Int64("sent_bytes", r.sentBytes.Load()).Msg("replica detached")
	return becomeReplica
}

func (c *client) newReplica(prePsync bool) *replica {
	peer, _, _ := net.SplitHostPort(c.conn.RemoteAddr().String())
	ip := peer
	if c.announcedIP != "" {
		ip = c.announcedIP
	}
	r := &replica{
		srv: c.srv, conn: c.conn, ip: ip, peerIP: peer, port: c.listeningPort,
		capaEOF: c.capaEOF, psync2: c.capaPsync2, rdbOnly: c.rdbOnly, prePsync: prePsync, since: time.Now(),
		noData: c.rdbNoData,
		codec:  c.codec(prePsync), out: c.conn, version: c.replicaVersion, userFormat: c.userFormat(),
		log: c.log.With().Int("listening_port", c.listeningPort).Logger(),
	}
	r.ackTime.Store(time.Now().UnixNano())
	if lim := c.srv.cfg.RateLimit; lim > 0 {
		// A tenth of a second of stream per burst keeps sends large.
		r.limiter = rate.NewLimiter(rate.Limit(lim), int(max(lim/10, 64<<10)))
	}
	return r
}

func detachReason(ctx context.Context, sendErr, readErr error) string {
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		if !strings.HasPrefix(cause.Error(), "replica connection closed") || sendErr == nil {
			return cause.Error()
		}
	}
	if sendErr != nil && !errors.Is(sendErr, net.ErrClosed) {
		return sendErr.Error()
	}
	if errors.Is(readErr, io.EOF) {
		return "replica closed the connection"
	}
	return fmt.Sprint(readErr)
}

// readAcks consumes what a replica sends once it streams: REPLCONF ACK and
// newlines. Nothing is ever answered: the connection carries the stream.
func (c *client) readAcks(r *replica) error {
	for {
		args, err := c.rd.ReadCommand()
		if err != nil {
			return err
		}
		r.ackTime.Store(time.Now().UnixNano())
		if len(args) < 3 || !strings.EqualFold(string(args[0]), "replconf") || !strings.EqualFold(string(args[1]), "ack") {
			continue
		}
		off, err := strconv.ParseInt(string(args[2]), 10, 64)
		if err != nil {
			continue
		}
		if limit := r.maxAck.Load(); off > limit {
			r.log.Warn().Int64("ack", off).Int64("sent_up_to", limit).Msg("replica acknowledged bytes it was never sent; dropping it")
			return fmt.Errorf("replica acknowledged offset %d, beyond the %d it was sent", off, limit)
		}
		// A legitimate ACK may overtake the sender's bookkeeping by a
		// moment; what counts is never more than what was sent.
		off = min(off, r.sentOff.Load()-1)
		if off > r.ackOff.Load() {
			r.ackOff.Store(off)
		}
		c.srv.notifyAck()
	}
}

// serve runs the sync and then the stream until the replica goes away.
func (r *replica) serve(ctx context.Context, req *psyncRequest) error {
	defer r.conn.Close()
	defer func() {
		if r.cw != nil {
			r.cw.Close()
		}
	}()
	var cur *backlog.Cursor
	var err error
	if req != nil {
		cur, err = r.tryContinue(ctx, *req)
		if err != nil {
			return err
		}
	}
	if cur == nil {
		cur, err = r.fullSync(ctx)
		if err != nil || cur == nil {
			return err
		}
	}
	defer cur.Close()
	// As Redis does when it puts a replica online: its ACK clock starts
	// now, not when it connected, however long the sync took.
	r.ackTime.Store(time.Now().UnixNano())
	r.setState(StateOnline, fmt.Sprintf("streaming the backlog from offset %d", cur.Offset()))
	return r.stream(ctx, cur)
}

// setState records and logs a transition with its reason, as Link.setState
// does for the upstream side.
func (r *replica) setState(state ReplicaState, reason string) {
	if prev := ReplicaState(r.state.Swap(uint32(state))); prev != state {
		r.log.Info().Stringer("from", prev).Stringer("to", state).Str("reason", reason).Msg("replica state")
	}
}

// tryContinue applies the master's partial-resync rules. It returns a nil
// cursor (and no error) when a full sync is needed.
func (r *replica) tryContinue(ctx context.Context, req psyncRequest) (*backlog.Cursor, error) {
	store := r.srv.cfg.Store
	deadline := time.Now().Add(r.srv.cfg.holdAhead)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		st, lg := store.View()
		verdict := judgePsync(st, req)
		switch verdict {
		case psyncContinue:
			return r.acceptContinue(st, lg, req)
		case psyncAhead:
			if time.Now().Before(deadline) {
				if err := r.waitAhead(ctx, lg, st.End, tick.C); err != nil {
					return nil, err
				}
				continue
			}
			verdict = "offset ahead of the proxy's backlog for too long"
		}
		if req.replid != "?" {
			r.srv.stats.SyncPartialErr.Add(1)
		}
		r.log.Info().Str("replid", req.replid).Int64("offset", req.offset).Str("reason", string(verdict)).
			Int64("backlog_first", st.First).Int64("backlog_end", st.End).Msg("partial resync refused, full sync follows")
		return nil, nil
	}
}

type psyncVerdict string

const (
	psyncContinue psyncVerdict = "continue"
	psyncAhead    psyncVerdict = "ahead"
)

func judgePsync(st backlog.State, req psyncRequest) psyncVerdict {
	switch {
	case !st.HasHistory:
		return "the proxy has no history yet"
	case req.replid == "?":
		return "replica asked for a full sync"
	case strings.EqualFold(req.replid, st.ReplID):
	case strings.EqualFold(req.replid, st.ReplID2) && req.offset <= st.SecondOffset:
	default:
		return psyncVerdict(fmt.Sprintf("replication ID mismatch (proxy has %s, and %s up to %d)", st.ReplID, st.ReplID2, st.SecondOffset))
	}
	switch {
	case req.offset < st.First:
		return "offset below the backlog"
	case req.offset > st.End && strings.EqualFold(req.replid, st.ReplID):
		return psyncAhead
	case req.offset > st.End:
		return "offset beyond the backlog"
	}
	return psyncContinue
}

// waitAhead waits for the upstream to bring the proxy up to a replica that
// is ahead of it. Newlines before the PSYNC reply are skipped by the replica
// and keep it from timing out. seen is the end the caller judged by: an
// append that landed after it and before the channel was taken closed an
// earlier channel (or none, when nobody watched), so it is checked here
// rather than waited for until the next append or tick.
func (r *replica) waitAhead(ctx context.Context, lg *backlog.Log, seen int64, tick <-chan time.Time) error {
	var changed <-chan struct{}
	if lg != nil {
		changed = lg.Changed()
		if _, end := lg.Bounds(); end != seen {
			return nil
		}
	}
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-changed:
		return nil
	case <-tick:
		return r.write([]byte("\n"))
	}
}

func (r *replica) acceptContinue(st backlog.State, lg *backlog.Log, req psyncRequest) (*backlog.Cursor, error) {
	cur, err := lg.NewCursor(req.offset)
	if err != nil {
		return nil, fmt.Errorf("open backlog at %d: %w", req.offset, err)
	}
	reply := "+CONTINUE"
	if r.psync2 {
		reply += " " + st.ReplID
	}
	r.sentOff.Store(req.offset) // before the reply: the replica may ACK at once
	r.maxAck.Store(req.offset - 1)
	if err := r.write([]byte(reply + r.marker() + "\r\n")); err != nil {
		cur.Close()
		return nil, err
	}
	if err := r.beginStream(); err != nil {
		cur.Close()
		return nil, err
	}
	r.srv.stats.SyncPartialOK.Add(1)
	r.log.Info().Str("replid", req.replid).Int64("offset", req.offset).Int64("backlog_end", st.End).
		Int64("to_send", st.End-req.offset).Msg("replica attached with a partial resync")
	return cur, nil
}

// marker is appended to the PSYNC reply when the stream will be compressed.
func (r *replica) marker() string {
	if r.codec != "" {
		return " " + r.codec
	}
	return ""
}

// beginStream switches the connection to compression, if negotiated, right
// after the PSYNC reply line.
func (r *replica) beginStream() error {
	if r.codec == "" {
		return nil
	}
	cw, err := newCompressedWriter(r.codec, r.conn, &r.srv.stats.CompressedWire)
	if err != nil {
		return err
	}
	r.cw, r.out = cw, cw
	return nil
}

// flushed ends a send: a compressed stream is flushed so the replica sees
// the bytes now; n raw bytes went in.
func (r *replica) flushed(n int64) error {
	if r.cw == nil {
		return nil
	}
	r.srv.stats.CompressedRaw.Add(n)
	if err := r.cw.Flush(); err != nil {
		return fmt.Errorf("flush %s stream: %w", r.codec, err)
	}
	return nil
}

// alive says a send that timed out may go on: the replica is not reading
// (loading an RDB, say) but still talks to us, as Redis replicas send ACKs
// or newlines while they load. Only one silent for the whole timeout is
// dropped, as Redis drops a replica by its ACK time.
//
// Only a plain connection can go on after a timed-out write: a TLS
// connection refuses every write after one, and a zstd encoder has lost
// its place in the stream.
func (r *replica) alive(err error) bool {
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		return false
	}
	if _, isTLS := r.conn.(*tls.Conn); isTLS || r.cw != nil {
		return false
	}
	return time.Since(time.Unix(0, r.ackTime.Load())) < r.srv.cfg.ReplTimeout
}

// write sends bytes outside the stream: keepalives and reply lines.
func (r *replica) write(p []byte) error {
	r.conn.SetWriteDeadline(time.Now().Add(r.srv.cfg.ReplTimeout))
	_, err := r.conn.Write(p)
	if err != nil {
		return fmt.Errorf("write to replica: %w", err)
	}
	return nil
}

// stream sends the backlog from the cursor on, at the replica's own pace:
// its lag lives in the segment files, not in proxy memory.
func (r *replica) stream(ctx context.Context, cur *backlog.Cursor) error {
	lg := cur.Log()
	var pf pendingFlush
	defer pf.stop()
	r.watch = r.watchCommands(cur.Offset())
	f := r.follower()
	cf := r.compressedFollower()
	r.memOut, r.sock = r.watch.wrap(r.out).Write, r.plainSocket()
	if r.sock != nil {
		r.memOut = (&memoryWriter{raw: r.sock, full: &r.full, watch: r.watch}).send
	}
	for {
		r.conn.SetWriteDeadline(time.Now().Add(r.srv.cfg.ReplTimeout))
		r.maxAck.Store(cur.Offset() + r.chunk() - 1)
		n, err := r.send(cur)
		r.sentBytes.Add(n)
		r.sentOff.Store(cur.Offset())
		r.maxAck.Store(cur.Offset() - 1)
		if err == nil && n > 0 {
			err = r.noteSent(&pf, n)
		}
		if errors.Is(err, backlog.ErrClosed) {
			return errors.New("the proxy's replication history was reset")
		}
		if err != nil && r.alive(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("send backlog at %d: %w", cur.Offset(), err)
		}
		if n > 0 {
			if r.limiter != nil {
				// Pacing may sleep: what is sent must not wait with it.
				if err := r.flushNow(&pf); err != nil {
					return err
				}
			}
			if err := r.pace(ctx, n); err != nil {
				return err
			}
			continue
		}
		if r.full {
			continue // the rest waits on the socket, from the file
		}
		if f != nil && cur.Park(f) {
			if err := r.follow(ctx, cur, f); err != nil {
				return err
			}
			continue
		}
		if cf != nil && cur.Park(cf.f) {
			if err := r.followCompressed(ctx, cur, cf, &pf); err != nil {
				return err
			}
			continue
		}
		changed := lg.Changed()
		if _, end := lg.Bounds(); end > cur.Offset() {
			continue // appended between the send and taking the channel
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-changed:
		case <-pf.due():
			if err := r.flushNow(&pf); err != nil {
				return err
			}
		}
	}
}

// zstdFlushDelay is how long stream bytes may wait in a replica's
// encoder (zstd or s2) for more to pack into the same block. A flush per
// send made one small block per upstream read, which cost the sending
// proxy most of its CPU under many small writes. 5 ms makes blocks of
// about 64 KiB at 13 MB/s, where 2 ms made 27 KiB ones that cost zstd a
// third more CPU per GB and s2 a tenth more wire (BenchmarkCompressedStream,
// flush=send against flush=64K); a compressed hop crosses a slow link,
// where 5 ms is small against the round trip.
const zstdFlushDelay = 5 * time.Millisecond

// pendingFlush is what a compressed stream has written but not flushed.
type pendingFlush struct {
	bytes    int64
	deadline time.Time
	timer    *time.Timer
	// held says bytes wait in a compressed follower's buffer, not yet in
	// the encoder, with deadline already running for them.
	held bool
}

// due fires when the pending bytes must go out; nil when there are none.
func (pf *pendingFlush) due() <-chan time.Time {
	if pf.bytes == 0 && !pf.held {
		return nil
	}
	wait := time.Until(pf.deadline)
	if pf.timer == nil {
		pf.timer = time.NewTimer(wait)
	} else {
		pf.timer.Reset(wait)
	}
	return pf.timer.C
}

func (pf *pendingFlush) stop() {
	if pf.timer != nil {
		pf.timer.Stop()
	}
}

// noteSent accounts for n raw bytes sent; a compressed stream is flushed
// once its oldest unflushed byte has waited zstdFlushDelay.
func (r *replica) noteSent(pf *pendingFlush, n int64) error {
	if r.cw == nil {
		return nil
	}
	if pf.bytes == 0 && !pf.held {
		pf.deadline = time.Now().Add(zstdFlushDelay)
	}
	pf.held = false
	pf.bytes += n
	if time.Now().Before(pf.deadline) {
		return nil
	}
	return r.flushNow(pf)
}

func (r *replica) flushNow(pf *pendingFlush) error {
	if pf.bytes == 0 {
		return nil
	}
	n := pf.bytes
	pf.bytes = 0
	return r.flushed(n)
}

// send feeds a caught-up replica the bytes just appended, from memory, and
// one that is behind from its disk cursor; it rejoins the memory path as
// soon as its offset reaches the last append again. Only a disk send waits
// for a full socket (see memoryWriter).
func (r *replica) send(cur *backlog.Cursor) (int64, error) {
	if !r.full {
		if n, ok, err := cur.SendRecent(r.memOut, r.chunk()); ok {
			r.srv.stats.SentFromMemory.Add(n)
			return n, err
		}
	}
	r.full = false
	var n int64
	var err error
	if r.sock != nil {
		n, err = r.sendFromDisk(cur, r.sock)
	} else {
		n, err = cur.Send(r.watch.wrap(r.out), r.chunk())
	}
	r.srv.stats.SentFromDisk.Add(n)
	return n, err
}
