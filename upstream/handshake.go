package upstream

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/fanout"
	"github.com/replproxy/replproxy/resp"
)

// errTransient marks a refusal the master expects us to retry later.
var errTransient = errors.New("master asks to retry later")

// handshake sends what a Redis 7 replica sends: PING alone, then AUTH and the
// REPLCONFs back to back, then reads their replies in order.
func (l *Link) handshake(conn net.Conn, rd *resp.Reader, rdbOnly bool) error {
	if _, err := conn.Write(resp.AppendCommand(nil, "PING")); err != nil {
		return fmt.Errorf("send PING: %w", err)
	}
	line, err := readReply(rd)
	if err != nil {
		return fmt.Errorf("read PING reply: %w", err)
	}
	if !pingAccepted(line) {
		return fmt.Errorf("master refused PING: %s", line)
	}
	out, replies := l.handshakeCommands(rdbOnly)
	if _, err := conn.Write(out); err != nil {
		return fmt.Errorf("send handshake: %w", err)
	}
	return l.readHandshakeReplies(rd, replies)
}

// handshakeCommands encodes AUTH (when configured) and the REPLCONFs, and
// names the replies to expect, in order.
func (l *Link) handshakeCommands(rdbOnly bool) (out []byte, replies []string) {
	if l.cfg.Password != "" {
		if l.cfg.User != "" {
			out = resp.AppendCommand(out, "AUTH", l.cfg.User, l.cfg.Password)
		} else {
			out = resp.AppendCommand(out, "AUTH", l.cfg.Password)
		}
		replies = append(replies, "AUTH")
	}
	out = resp.AppendCommand(out, "REPLCONF", "listening-port", strconv.Itoa(l.cfg.ListenPort))
	capa := []string{"REPLCONF", "capa", "eof", "capa", "psync2"}
	if !rdbOnly {
		for _, codec := range l.cfg.Codecs {
			capa = append(capa, "capa", fanout.Capa(codec))
		}
	}
	if rdbOnly {
		capa = append(capa, "capa", fanout.CapaRefresh)
	}
	out = resp.AppendCommand(out, capa...)
	replies = append(replies, "REPLCONF listening-port", "REPLCONF capa")
	if rdbOnly {
		out = resp.AppendCommand(out, "REPLCONF", "rdb-only", "1")
		replies = append(replies, "REPLCONF rdb-only")
	}
	return out, replies
}

// readHandshakeReplies follows Redis: a refused AUTH is fatal, a refused
// REPLCONF is only logged. Without rdb-only support a refresh cannot work.
func (l *Link) readHandshakeReplies(rd *resp.Reader, replies []string) error {
	for _, what := range replies {
		line, err := readReply(rd)
		if err != nil {
			return fmt.Errorf("read %s reply: %w", what, err)
		}
		if !strings.HasPrefix(line, "-") {
			continue
		}
		switch what {
		case "AUTH":
			return fmt.Errorf("master refused AUTH: %s", line)
		case "REPLCONF rdb-only":
			return fmt.Errorf("%w (Redis 6.2+ needed, and an ACL that allows it): %s", errRDBOnlyRefused, line)
		}
		l.log.Warn().Str("reply", line).Msg(what + " refused by master; continuing as Redis does")
	}
	return nil
}

// pingAccepted follows Redis: authentication errors are fine at this point,
// they are settled by AUTH.
func pingAccepted(line string) bool {
	return strings.HasPrefix(line, "+") || strings.HasPrefix(line, "-NOAUTH") ||
		strings.HasPrefix(line, "-NOPERM") || strings.HasPrefix(line, "-ERR operation not permitted")
}

// readReply reads one reply line, skipping the newlines a master may send
// while it prepares.
func readReply(rd *resp.Reader) (string, error) {
	for {
		line, err := rd.ReadLine()
		if err != nil {
			return "", err
		}
		if len(line) > 0 {
			return string(line), nil
		}
	}
}

// psync asks to continue from the byte after the last one stored; with no
// history it asks for a full sync. It returns the reader the rest of the
// connection is read with: decompressing, when the master is a replproxy
// that agreed to compress.
func (l *Link) psync(conn net.Conn, rd *resp.Reader) (*resp.Reader, error) {
	l.store.Resume() // after a cut of the log, appends continue from its new end
	st := l.store.State()
	replid, offset := "?", "-1"
	if st.HasHistory && !l.forceFull.Load() {
		replid, offset = st.ReplID, strconv.FormatInt(st.End, 10)
	}
	if _, err := conn.Write(resp.AppendCommand(nil, "PSYNC", replid, offset)); err != nil {
		return nil, fmt.Errorf("send PSYNC: %w", err)
	}
	line, err := readReply(rd)
	if err != nil {
		return nil, fmt.Errorf("read PSYNC reply: %w", err)
	}
	l.log.Info().Str("replid", replid).Str("offset", offset).Str("reply", line).Msg("PSYNC answered")
	if codec := replyCodec(line, l.cfg.Codecs); codec != "" {
		line = strings.TrimSuffix(line, " "+codec)
		if rd, err = decompressing(codec, rd); err != nil {
			return nil, err
		}
		l.log.Info().Str("codec", codec).Msg("the stream comes compressed")
	}
	switch {
	case strings.HasPrefix(line, "+FULLRESYNC"):
		return rd, l.fullSync(conn, rd, line)
	case strings.HasPrefix(line, "+CONTINUE"):
		return rd, l.continued(st, strings.TrimSpace(strings.TrimPrefix(line, "+CONTINUE")))
	case strings.HasPrefix(line, "-NOMASTERLINK"), strings.HasPrefix(line, "-LOADING"):
		return nil, fmt.Errorf("%w: %s", errTransient, line)
	}
	return nil, fmt.Errorf("master refused PSYNC: %s", line)
}

// AskedCodecs are the codecs master.compression asks for, best first.
func AskedCodecs(compression string) []string {
	switch compression {
	case "", "none":
		return nil
	case "auto":
		return fanout.AllCodecs()
	}
	return []string{compression}
}

// replyCodec is the codec a PSYNC reply names at its end, when it is one
// this proxy asked for; "" otherwise. A replication ID is 40 hex digits,
// so it never reads as a codec's name.
func replyCodec(line string, asked []string) string {
	if !strings.HasPrefix(line, "+") {
		return ""
	}
	for _, codec := range asked {
		if strings.HasSuffix(line, " "+codec) {
			return codec
		}
	}
	return ""
}

// decompressing reads the rest of the connection through codec.
func decompressing(codec string, rd *resp.Reader) (*resp.Reader, error) {
	dec, err := fanout.NewStreamDecoder(codec, rd.Bufio())
	if err != nil {
		return nil, err
	}
	return resp.NewReader(bufio.NewReaderSize(dec, 64<<10), resp.DefaultLimits()), nil
}

// continued handles +CONTINUE. A new ID means the master was promoted: the
// old ID stays valid up to here as replid2, and the replicas are dropped so
// they PSYNC again, as a chained Redis replica does.
func (l *Link) continued(st backlog.State, newID string) error {
	l.PartialSyncs.Add(1)
	if newID == "" || strings.EqualFold(newID, st.ReplID) {
		l.log.Info().Int64("offset", st.End).Msg("partial resync with master accepted")
		return nil
	}
	if len(newID) != 40 {
		return fmt.Errorf("master sent +CONTINUE with a malformed replication ID %q", newID)
	}
	if err := l.store.ShiftID(newID); err != nil {
		return err
	}
	ev := l.log.Info().Str("new_replid", newID).Str("replid2", st.ReplID).Int64("second_offset", st.End)
	if since, ok := l.Failover.continued(time.Now()); ok {
		ev = ev.Int64("since_promotion_ms", since.Milliseconds())
	}
	ev.Msg("master changed replication ID; shifted IDs and dropping replicas so they resync")
	l.fan.DropAll("upstream replication ID changed")
	return nil
}

// fullSync receives the RDB into a new snapshot and starts a new history.
func (l *Link) fullSync(conn net.Conn, rd *resp.Reader, line string) error {
	fields := strings.Fields(line)
	if len(fields) != 3 || len(fields[1]) != 40 {
		return fmt.Errorf("malformed FULLRESYNC line %q", line)
	}
	replid := fields[1]
	offset, err := strconv.ParseInt(fields[2], 10, 64)
	if err != nil || offset < 0 {
		return fmt.Errorf("malformed FULLRESYNC offset in %q", line)
	}
	l.setState(fanout.LinkSync, "master started a full sync")
	l.Sync.begin()
	defer l.Sync.end()
	start := time.Now()
	w, err := l.store.NewSnapshot()
	if err != nil {
		return &storeFailure{err}
	}
	eof, err := receiveRDB(rd, w, &l.Sync)
	if err != nil {
		w.Abort()
		l.noteRDBTooLarge(err)
		return fmt.Errorf("receive RDB: %w", err)
	}
	// Checking and committing a large RDB takes a while; a newline a
	// second tells the master we are alive, as a loading Redis replica does.
	stopKeepalive := keepalive(conn)
	defer stopKeepalive()
	rdb, err := checkRDB(w.Path(), offset)
	if err != nil {
		w.Abort()
		return err
	}
	size := w.Size()
	l.RawBytes.Add(size)
	if err := l.store.Reset(replid, offset, w); err != nil {
		return &storeFailure{fmt.Errorf("store snapshot: %w", err)}
	}
	stopKeepalive()
	l.FullSyncs.Add(1)
	l.forceFull.Store(false)
	l.rdbNeed.Store(0)
	// Replicas of the old history need no explicit drop: Reset closed its
	// log, which ends their senders, while replicas that attach from now on
	// already follow the new history.
	l.log.Info().Str("replid", replid).Int64("offset", offset).Int64("rdb_bytes", size).
		Bool("diskless", eof).Dur("duration_ms", time.Since(start)).Str("rdb_header", rdb.Header()).
		Int("rdb_version", rdb.Version).Str("producer", rdb.Producer()).Str("redis_ver", rdb.RedisVer).
		Str("valkey_ver", rdb.ValkeyVer).Bool("crc_checked", rdb.CRCChecked).Msg("full sync from master done")
	if rdb.Note != "" || !rdb.Known {
		l.log.Warn().Str("rdb_header", rdb.Header()).Str("note", rdb.Note).
			Msg("RDB format newer than this proxy knows; relayed as received, the replicas will judge it")
	}
	// A diskless master starts the stream only at the first ACK, whatever
	// the ack mode: it acknowledges nothing beyond the snapshot itself.
	// Redis ignores an ACK that arrives before its RDB child has exited,
	// so the ACK loop repeats it until the stream starts.
	l.awaitStream.Store(offset)
	return sendAck(conn, offset)
}

// keepalive writes a newline to the master every second until stopped.
// The master counts an empty line from a replica as a sign of life and
// never as part of the offset.
func keepalive(conn net.Conn) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				conn.Write([]byte("\n"))
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(done); <-finished })
	}
}

// receiveRDB reads either framing: "$<len>" then exactly len bytes, or
// "$EOF:<mark>" then bytes up to the same 40-byte mark.
func receiveRDB(rd *resp.Reader, w io.Writer, count *Transfer) (eof bool, err error) {
	line, err := readReply(rd)
	if err != nil {
		return false, fmt.Errorf("read RDB preamble: %w", err)
	}
	switch {
	case strings.HasPrefix(line, "-"):
		return false, fmt.Errorf("master aborted the transfer: %s", line)
	case !strings.HasPrefix(line, "$"):
		return false, fmt.Errorf("bad RDB preamble %q", line)
	case strings.HasPrefix(line, "$EOF:"):
		mark := []byte(line[5:])
		if len(mark) != 40 {
			return true, fmt.Errorf("bad EOF mark in preamble %q", line)
		}
		return true, copyUntilMark(w, rd.Bufio(), mark, count)
	}
	n, err := strconv.ParseInt(line[1:], 10, 64)
	if err != nil || n < 0 {
		return false, fmt.Errorf("bad RDB length in preamble %q", line)
	}
	count.Total.Store(n)
	got, err := io.CopyN(w, &countingReader{r: rd.Bufio(), n: count}, n)
	if err != nil {
		return false, fmt.Errorf("RDB ended after %d of %d bytes: %w", got, n, err)
	}
	return false, nil
}

// copyUntilMark writes everything before the trailing mark. The master sends
// nothing after the mark until the replica ACKs, so the mark always ends a read.
func copyUntilMark(w io.Writer, r io.Reader, mark []byte, count interface{ Add(int64) int64 }) error {
	m := len(mark)
	buf := make([]byte, m+64<<10)
	held := 0
	for {
		n, err := r.Read(buf[held:])
		count.Add(int64(n))
		total := held + n
		if total >= m && bytes.Equal(buf[total-m:total], mark) {
			_, werr := w.Write(buf[:total-m])
			return werr
		}
		if total > m {
			if _, werr := w.Write(buf[:total-m]); werr != nil {
				return werr
			}
			copy(buf, buf[total-m:total])
			held = m
		} else {
			held = total
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
}

type countingReader struct {
	r io.Reader
	n interface{ Add(int64) int64 }
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// Transfer counts the bytes of one RDB transfer as they arrive; Total is -1
// until known (never, for a diskless $EOF transfer).
type Transfer struct {
	Done    atomic.Int64
	Total   atomic.Int64
	Started atomic.Int64 // unix nanoseconds
	Active  atomic.Bool
}

func (t *Transfer) begin() {
	t.Done.Store(0)
	t.Total.Store(-1)
	t.Started.Store(time.Now().UnixNano())
	t.Active.Store(true)
}

func (t *Transfer) end() { t.Active.Store(false) }

// Add implements the byte counter receiveRDB feeds.
func (t *Transfer) Add(n int64) int64 { return t.Done.Add(n) }
