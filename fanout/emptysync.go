package fanout

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hdt3213/rdb/crc64jones"

	"github.com/replproxy/replproxy/backlog"
)

// rdbFilter reads REPLCONF rdb-filter-only's value as Redis 7.0+ does: a
// list of what to include, where "" includes nothing, so the RDB carries no
// keys. The only other filter Redis knows, "functions", would need the
// snapshot parsed; it is refused rather than served wrong. It returns the
// error to send, or "".
func (c *client) rdbFilter(val string) string {
	for _, f := range strings.Fields(val) {
		if strings.EqualFold(f, "functions") {
			return "ERR replproxy cannot serve rdb-filter-only functions: it serves stored snapshots whole; ask the master"
		}
		return "ERR Unsupported rdb-filter-only option: " + f
	}
	c.rdbNoData = true
	return ""
}

// emptySync serves a client that asked for no data (redis-cli --replica
// sends REPLCONF rdb-filter-only ""): as Redis does, an RDB without keys at
// the offset the stream has reached, then the stream from the next byte.
// It needs no snapshot and forks nothing.
func (r *replica) emptySync(ctx context.Context) (*backlog.Cursor, error) {
	st, lg, err := r.waitHistory(ctx)
	if err != nil {
		return nil, err
	}
	// An RDB at offset S continues at S+1: here S is the last byte stored.
	off := st.End - 1
	cur, err := lg.NewCursor(st.End)
	if err != nil {
		return nil, fmt.Errorf("stream from offset %d: %w", st.End, err)
	}
	rdb := emptyRDB(st.ReplID, off)
	r.srv.stats.SyncFull.Add(1)
	r.sentOff.Store(st.End)
	r.maxAck.Store(off)
	r.state.Store(StateSendBulk)
	r.log.Info().Str("replid", st.ReplID).Int64("offset", off).
		Msg("replica asked for no data (rdb-filter-only): sent an empty RDB, the stream follows from now")
	if err := r.preamble(st.ReplID, backlog.SnapshotInfo{Offset: off, Size: int64(len(rdb))}); err != nil {
		cur.Close()
		return nil, err
	}
	r.conn.SetWriteDeadline(time.Now().Add(r.srv.cfg.ReplTimeout))
	if _, err := r.out.Write(rdb); err != nil {
		cur.Close()
		return nil, fmt.Errorf("write to replica: %w", err)
	}
	if err := r.flushed(int64(len(rdb))); err != nil {
		cur.Close()
		return nil, err
	}
	r.sentBytes.Add(int64(len(rdb)))
	if r.rdbOnly {
		cur.Close()
		return nil, nil
	}
	return cur, nil
}

// waitHistory waits until the proxy holds a stream to follow, sending a
// newline a second meanwhile, as it does to replicas that wait for a
// snapshot.
func (r *replica) waitHistory(ctx context.Context) (backlog.State, *backlog.Log, error) {
	defer r.endWait()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		st, lg := r.srv.cfg.Store.View()
		if st.HasHistory && lg != nil {
			return st, lg, nil
		}
		r.setWait(WaitNoHistory)
		select {
		case <-ctx.Done():
			return st, nil, context.Cause(ctx)
		case <-tick.C:
			if err := r.write([]byte("\n")); err != nil {
				return st, nil, err
			}
		}
	}
}

// emptyRDB is an RDB with no keys (version 9, which Redis 5.0 and later
// load), naming the replication ID and offset as Redis' aux fields do.
func emptyRDB(replid string, offset int64) []byte {
	var b bytes.Buffer
	b.WriteString("REDIS0009")
	for _, kv := range [][2]string{{"repl-id", replid}, {"repl-offset", strconv.FormatInt(offset, 10)}} {
		b.WriteByte(0xFA) // AUX
		for _, s := range kv {
			b.WriteByte(byte(len(s))) // a length under 64 fits the 6-bit form
			b.WriteString(s)
		}
	}
	b.WriteByte(0xFF) // EOF
	h := crc64jones.New()
	h.Write(b.Bytes())
	var sum [8]byte
	binary.LittleEndian.PutUint64(sum[:], h.Sum64())
	b.Write(sum[:])
	return b.Bytes()
}
