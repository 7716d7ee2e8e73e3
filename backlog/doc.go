// Package backlog is the proxy's replication state on disk: the meta file,
// the snapshot, and the log of stream bytes addressed by the master's
// offsets.
//
// Who owns what:
//   - Store: the upstream link is its only writer (AppendBatch, Reset,
//     AdoptSnapshot, ShiftID, Resume); everyone else reads (View, State).
//   - Log: the writer owns the active segment's files, the prepared next
//     segment and the time index. It writes the page cache with plain
//     system calls only, never raw ones (a raw call that sleeps in the
//     kernel stops every goroutine at the next GC), and holds no lock that
//     a reader takes while it writes. It publishes an append's bytes only
//     once they and their index record are written.
//   - The syncer goroutine owns fsync and the rolled segments until they
//     are synced, sealed and closed; a failed fsync cuts the log back.
//   - A Cursor belongs to one reader goroutine. A parked Follower belongs to
//     the log, and the writer feeds it after each append; it goes back to
//     its reader on a short push, a cut or Close.
//   - A batch is shared by reference count: the writer, the recent slot and
//     each reader sending from it hold one.
//
// Lock order (take the earlier before the later, never the reverse):
//
//	Store.writeMu > Log.wmu > Store.mu > syncer.syncMu > Log.follow.mu > Log.mu > syncer.mu, segment.ver.mu
//
// Store.mu is taken under Log.wmu (a rolling append asks Hold what the
// snapshot needs), so nothing waits for the writer with Store.mu held;
// Store.Close holds writeMu instead. Store.mu and Log.mu are never held
// across disk I/O on the append or serving paths: the writer takes Log.mu
// only to move the end. A cut (a failed fsync, damage found) is the
// exception: it holds Log.mu while it truncates. Log.wmu and syncer.syncMu are held across writes
// and fsyncs, and are taken only by the writer, the syncer, SyncNow (the
// link's ACK loop, for WAIT), a cut and Close.
package backlog
