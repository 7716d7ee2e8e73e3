package fanout

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/rdbmeta"
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
// That offset is the last command boundary stored, not the log's end,
// which can fall inside a command. It forks nothing.
func (r *replica) emptySync(ctx context.Context) (*backlog.Cursor, error) {
	st, lg, err := r.waitHistory(ctx)
	if err != nil {
		return nil, err
	}
	start, db, err := r.commandBoundary(ctx, st, lg)
	if err != nil {
		r.write([]byte("-ERR replproxy cannot tell where the stream's last command starts (" + strings.ReplaceAll(err.Error(), "\r\n", " ") + "); ask the master\r\n"))
		return nil, fmt.Errorf("empty sync: %w", err)
	}
	// An RDB at offset S continues at S+1.
	off := start - 1
	cur, err := lg.NewCursor(start)
	if err != nil {
		return nil, fmt.Errorf("stream from offset %d: %w", start, err)
	}
	rdb := emptyRDB(st.ReplID, off, db)
	r.srv.stats.SyncFull.Add(1)
	r.sentOff.Store(start)
	r.maxAck.Store(off)
	r.setState(StateSendBulk, fmt.Sprintf("sending an empty RDB at offset %d (rdb-filter-only)", off))
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
// load), naming the replication ID, offset and the stream's database as
// Redis' aux fields do: a replica's master client starts in that database.
func emptyRDB(replid string, offset, db int64) []byte {
	var b bytes.Buffer
	b.WriteString("REDIS0009")
	aux := [][2]string{{"repl-stream-db", strconv.FormatInt(db, 10)}, {"repl-id", replid}, {"repl-offset", strconv.FormatInt(offset, 10)}}
	for _, kv := range aux {
		b.WriteByte(0xFA) // AUX
		for _, s := range kv {
			b.WriteByte(byte(len(s))) // a length under 64 fits the 6-bit form
			b.WriteString(s)
		}
	}
	b.WriteByte(0xFF) // EOF
	return rdbmeta.AppendCRC(b.Bytes())
}

// commandBoundary reads the stream from the snapshot's offset, a command
// boundary the master set, up to the log's end, and returns the offset
// where the last whole unit ends and the database selected there. It reads
// from disk what a full sync would, and holds no lock.
func (r *replica) commandBoundary(ctx context.Context, st backlog.State, lg *backlog.Log) (int64, int64, error) {
	if st.Snapshot == nil || st.Snapshot.Offset+1 < st.First {
		return 0, 0, errors.New("no snapshot whose continuation the backlog holds")
	}
	from := st.Snapshot.Offset + 1
	sc := newCommandScanner(from, r.snapshotDB(*st.Snapshot))
	cur, err := lg.NewCursor(from)
	if err != nil {
		return 0, 0, fmt.Errorf("read stream from offset %d: %w", from, err)
	}
	defer cur.Close()
	for cur.Offset() < st.End {
		if err := ctx.Err(); err != nil {
			return 0, 0, err
		}
		n, err := cur.Send(sc, st.End-cur.Offset())
		if err != nil {
			return 0, 0, fmt.Errorf("read stream at offset %d: %w", cur.Offset(), err)
		}
		if n == 0 {
			return 0, 0, fmt.Errorf("the log was cut below offset %d", st.End)
		}
	}
	return sc.boundary, sc.db, nil
}

// snapshotDB is the database the stream had selected at snap, from its
// repl-stream-db; 0, where Redis starts, when it does not say.
func (r *replica) snapshotDB(snap backlog.SnapshotInfo) int64 {
	f, info, err := r.srv.cfg.Store.OpenSnapshot()
	if err != nil {
		return 0
	}
	defer f.Close()
	if info.File != snap.File {
		return 0
	}
	meta, err := rdbmeta.Read(f)
	if err != nil || meta.ReplStreamDB < 0 {
		return 0
	}
	return meta.ReplStreamDB
}
