package fanout

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/replproxy/replproxy/backlog"
)

// rdbClient says the peer takes an RDB without a stream it could follow
// (REPLCONF rdb-only), or speaks plain SYNC: redis-cli --rdb and backup
// scripts. Such a client may take the stored snapshot for a fresh one, and
// sees none of the newlines that keep a waiting replica. A downstream
// replproxy refreshing its snapshot knows what it asked for.
func (r *replica) rdbClient() bool {
	return (r.rdbOnly || r.prePsync) && !r.refresh
}

// logStoredSnapshot says, before an rdbClient is served, that the RDB is
// the stored snapshot, and how old it is.
func (r *replica) logStoredSnapshot(f *os.File, snap backlog.SnapshotInfo) {
	ev := r.log.Info().Str("file", snap.File).Int64("offset", snap.Offset).Int64("rdb_bytes", snap.Size).
		Int64("bytes_behind_stream", r.srv.cfg.Store.State().MasterReplOffset()-snap.Offset)
	if st, err := f.Stat(); err == nil {
		ev = ev.Time("written_at", st.ModTime()).Float64("age_seconds", time.Since(st.ModTime()).Round(time.Second).Seconds())
	}
	ev.Msg("serving the stored snapshot, not a fresh one, to an RDB-only or SYNC client (redis-cli --rdb): it holds the data as of its offset")
}

// refuseWithoutSnapshot answers an rdbClient at once when there is no
// snapshot to serve: it would see a wait as a hang. The error line says
// why and how far the proxy is; redis-cli --rdb prints it.
func (r *replica) refuseWithoutSnapshot(reason string, cause error) error {
	msg := "ERR replproxy has no snapshot to serve yet (" + reason + "): "
	if reason == WaitNoHistory {
		msg += "its first full sync from the master has not completed" + r.upstreamProgress()
	} else {
		msg += cause.Error() + "; a fresh one is being fetched from the master"
	}
	msg += "; try again later"
	r.log.Warn().Str("reason", reason).Str("detail", cause.Error()).Msg("RDB-only or SYNC client refused: no snapshot to serve yet")
	if err := r.write([]byte("-" + msg + "\r\n")); err != nil {
		return err
	}
	return errors.New(msg)
}

// upstreamProgress describes the upstream link for refuseWithoutSnapshot.
func (r *replica) upstreamProgress() string {
	up := r.srv.cfg.Upstream
	if up == nil {
		return ""
	}
	st := up.LinkStatus()
	switch {
	case st.State == LinkSync && st.SyncTotal > 0:
		return fmt.Sprintf(" (receiving the master's RDB: %d of %d bytes)", st.SyncBytes, st.SyncTotal)
	case st.State == LinkSync:
		return fmt.Sprintf(" (receiving the master's RDB: %d bytes so far)", st.SyncBytes)
	}
	return fmt.Sprintf(" (link to %s:%d: %s)", st.MasterHost, st.MasterPort, st.State)
}
