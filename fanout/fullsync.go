package fanout

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/replproxy/replproxy/backlog"
)

// fullSync serves the stored snapshot and returns a cursor at the byte right
// after it: a snapshot taken at offset S continues with the backlog at S+1.
// A nil cursor with no error means the replica wanted the RDB only.
func (r *replica) fullSync(ctx context.Context) (*backlog.Cursor, error) {
	if r.noData {
		return r.emptySync(ctx)
	}
	r.setState(StateWaitBgsave, "a full sync is needed")
	if err := r.waitPacing(ctx); err != nil {
		return nil, err
	}
	release, err := r.acquireFullSync(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	f, snap, cur, replid, err := r.waitSnapshot(ctx)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	converted := false
	if cf, csnap, err := r.convertFor(ctx, f, snap); err != nil {
		cur.Close()
		if errors.Is(err, errConversion) {
			// Paced: a replica that reconnects at once is not to start
			// the same failing conversion once a second.
			return nil, r.refuseFullSync(err)
		}
		return nil, fmt.Errorf("convert snapshot for the replica: %w", err)
	} else if cf != f {
		defer cf.Close()
		f, snap = cf, csnap
		converted = true
	}
	attempt := r.beginFullSync(ctx, f, snap)
	r.srv.stats.SyncFull.Add(1)
	r.sentOff.Store(snap.Offset + 1)
	r.maxAck.Store(snap.Offset)
	r.setState(StateSendBulk, fmt.Sprintf("sending the snapshot at offset %d", snap.Offset))
	start := time.Now()
	r.log.Info().Str("replid", replid).Int64("offset", snap.Offset).Int64("rdb_bytes", snap.Size).
		Msg("replica attached with a full sync from the snapshot")
	if r.rdbClient() {
		r.logStoredSnapshot(f, snap)
	}
	// A conversion was checked against its own CRC-64 as it was opened
	// (openConverted); the stored snapshot's reader would take a mismatch
	// in it for damage to the stored snapshot.
	var rd io.Reader = io.NewSectionReader(f, 0, snap.Size)
	if !converted {
		sr := r.srv.cfg.Store.NewSnapshotReader(f, snap)
		if err := sr.Verify(ctx); err != nil {
			cur.Close()
			r.log.Error().Err(err).Int64("rdb_bytes", snap.Size).
				Msg("snapshot damaged: nothing of it is sent; the replica is dropped and waits for a fresh snapshot")
			return nil, fmt.Errorf("check snapshot %s: %w", snap.File, err)
		}
		rd = sr
	}
	if err := r.preamble(replid, snap); err != nil {
		cur.Close()
		return nil, err
	}
	if err := r.sendFile(ctx, rd, snap.Size); err != nil {
		cur.Close()
		return nil, fmt.Errorf("send snapshot %s: %w", snap.File, err)
	}
	attempt.snapshotSent()
	r.log.Info().Int64("rdb_bytes", snap.Size).Dur("duration_ms", time.Since(start)).Msg("snapshot sent to replica")
	if r.rdbOnly {
		cur.Close()
		return nil, nil
	}
	return cur, nil
}

// preamble writes +FULLRESYNC (unless plain SYNC) and the $<len> line; with
// compression, the length line already goes through the encoder.
func (r *replica) preamble(replid string, snap backlog.SnapshotInfo) error {
	if !r.prePsync {
		line := "+FULLRESYNC " + replid + " " + strconv.FormatInt(snap.Offset, 10) + r.marker() + "\r\n"
		if err := r.write([]byte(line)); err != nil {
			return err
		}
		if err := r.beginStream(); err != nil {
			return err
		}
	}
	r.conn.SetWriteDeadline(time.Now().Add(r.srv.cfg.ReplTimeout))
	header := "$" + strconv.FormatInt(snap.Size, 10) + "\r\n"
	if _, err := io.WriteString(r.out, header); err != nil {
		return fmt.Errorf("write to replica: %w", err)
	}
	return r.flushed(int64(len(header)))
}

// waitSnapshot waits until a snapshot exists whose continuation is still in
// the backlog (and, for a downstream replproxy's refresh, that is as new as
// it asked). Until the preamble, Redis sends a newline a second so the
// replica does not time out; these bytes are outside the offset space. The
// wait is never silent: INFO and metrics show it, and it is logged every 30s.
func (r *replica) waitSnapshot(ctx context.Context) (*os.File, backlog.SnapshotInfo, *backlog.Cursor, string, error) {
	defer r.endWait()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var lastLog time.Time
	for {
		f, snap, cur, replid, err := r.openSnapshot()
		if err == nil {
			if w := r.wait.Load(); w != nil {
				r.log.Info().Dur("waited_ms", time.Since(w.since)).Int64("offset", snap.Offset).Msg("snapshot ready for the waiting replica")
			}
			return f, snap, cur, replid, nil
		}
		reason, need := r.waitReason(err)
		r.setWait(reason)
		w := r.wait.Load()
		if time.Since(lastLog) >= waitLogEvery {
			r.log.Warn().Str("reason", reason).Str("detail", err.Error()).Dur("waited_ms", time.Since(w.since)).
				Msg("replica waits for a snapshot")
			lastLog = time.Now()
		}
		if need >= 0 && r.srv.cfg.NeedSnapshot != nil {
			r.srv.cfg.NeedSnapshot(need)
		}
		if r.rdbClient() && (need >= 0 || reason == WaitNoHistory) {
			return nil, backlog.SnapshotInfo{}, nil, "", r.refuseWithoutSnapshot(reason, err)
		}
		if reason == WaitOlder && time.Since(w.since) > max(r.srv.cfg.ReplTimeout, minNeedTimeout) {
			// The requester backs off and asks again; an error line now
			// spares it a whole RDB it could not use.
			r.write([]byte("-ERR replproxy: no snapshot at or after offset " + strconv.FormatInt(r.need, 10) + " yet: " + err.Error() + "\r\n"))
			return nil, backlog.SnapshotInfo{}, nil, "", fmt.Errorf("no snapshot as new as requested within %s: %w", time.Since(w.since).Round(time.Second), err)
		}
		select {
		case <-ctx.Done():
			return nil, backlog.SnapshotInfo{}, nil, "", context.Cause(ctx)
		case <-tick.C:
			if err := r.write([]byte("\n")); err != nil {
				return nil, backlog.SnapshotInfo{}, nil, "", err
			}
		}
	}
}

// waitReason names why openSnapshot failed and the snapshot offset to ask
// the refresher for (-1: nothing to ask).
func (r *replica) waitReason(err error) (string, int64) {
	st := r.srv.cfg.Store.State()
	switch {
	case !st.HasHistory:
		return WaitNoHistory, -1
	case errors.Is(err, errTooOld):
		return WaitOlder, r.need
	case errors.Is(err, backlog.ErrTrimmed):
		return WaitTrimmed, st.First - 1
	case errors.Is(err, backlog.ErrSnapshotDamaged) && st.Snapshot != nil:
		return WaitDamaged, st.Snapshot.Offset + 1
	}
	return WaitTrimmed, -1 // replaced while opening: the next try will do
}

var errTooOld = errors.New("snapshot older than requested")

func (r *replica) openSnapshot() (*os.File, backlog.SnapshotInfo, *backlog.Cursor, string, error) {
	store := r.srv.cfg.Store
	f, snap, err := store.OpenSnapshot()
	if err != nil {
		return nil, snap, nil, "", err
	}
	st, lg := store.View()
	if st.Snapshot == nil || st.Snapshot.File != snap.File {
		f.Close()
		return nil, snap, nil, "", errors.New("snapshot replaced while opening it")
	}
	if snap.Offset < r.need {
		f.Close()
		return nil, snap, nil, "", fmt.Errorf("snapshot at offset %d, the requester needs %d or later: %w", snap.Offset, r.need, errTooOld)
	}
	cur, err := lg.NewCursor(snap.Offset + 1)
	if err != nil {
		f.Close()
		return nil, snap, nil, "", fmt.Errorf("snapshot at offset %d is older than the backlog: %w", snap.Offset, err)
	}
	return f, snap, cur, st.ReplID, nil
}

// sendFile sends the RDB in chunks, each under its own write deadline, so a
// slow but live replica is not cut off while a dead one is. A replica that
// took no byte for a whole timeout is not slow but stuck: it would hold
// its full-sync slot and the snapshot file for as long as it kept talking.
//
// The bytes go through memory, read from rd (a backlog.SnapshotReader):
// what is written is what went through its CRC-64, and the RDB's last
// bytes go only once that matches (sendfile would send whatever the file
// holds by then). After a short write the rest of the same chunk is
// written, never read again.
func (r *replica) sendFile(ctx context.Context, rd io.Reader, size int64) error {
	bp := r.srv.snapshotBufs.Get().(*[]byte)
	defer r.srv.snapshotBufs.Put(bp)
	buf := (*bp)[:min(int64(len(*bp)), r.chunk())]
	for sent := int64(0); sent < size; {
		k, err := rd.Read(buf)
		if errors.Is(err, backlog.ErrSnapshotDamaged) {
			r.log.Error().Err(err).Int64("sent", sent).Int64("rdb_bytes", size).
				Msg("snapshot damaged: its last bytes are not sent, so the replica never gets a whole RDB; it is dropped and waits for a fresh snapshot")
			return err
		}
		if k == 0 && (err == nil || errors.Is(err, io.EOF)) {
			err = io.ErrUnexpectedEOF
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		for p := buf[:k]; len(p) > 0; {
			r.conn.SetWriteDeadline(time.Now().Add(r.srv.cfg.ReplTimeout))
			n, err := r.out.Write(p)
			p = p[n:]
			sent += int64(n)
			r.sentBytes.Add(int64(n))
			if err == nil {
				err = r.flushed(int64(n))
			}
			if err != nil && n > 0 && r.alive(err) {
				continue
			}
			if err != nil {
				return err
			}
		}
		if err := r.pace(ctx, int64(k)); err != nil {
			return err
		}
	}
	return nil
}
