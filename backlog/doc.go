// Package backlog is the proxy's replication state on disk: the meta file,
// the snapshot, and the log of stream bytes addressed by the master's
// offsets. Layout names every path in the data dir.
//
// Who owns what:
//   - Store: the meta writers (Reset, ShiftID: the upstream link;
//     AdoptSnapshot: the link or the refresher) take writeMu; the append
//     path (AppendBatch, Resume) is the link's alone. Everyone else reads
//     (View, State). mu guards meta and log; snapMu the snapshot's
//     verified/damaged names.
//   - Log: the writer (the goroutine in AppendBatch, under wmu) owns the
//     active segment's files, the prepared next segment, recBuf, lastTrim,
//     holding and the time index. It writes the page cache with plain
//     system calls only, never raw ones (a raw call that sleeps in the
//     kernel stops every goroutine at the next GC). It publishes an
//     append's bytes only once they and their index record are written.
//     mu guards segs, first, end, changed, recent, closed, active, rewound,
//     resume, broken and unfinished; a segment's size too.
//   - A cut (a failed fsync from the syncer or SyncNow, damage found by a
//     sender or the scrub) takes the writer's place: it holds wmu, so it
//     may replace active and rewrite the files, as a roll does.
//   - The syncer owns fsync and the rolled segments until they are synced,
//     sealed and closed (syncer.mu guards retired, target, failed, stats).
//   - A Cursor belongs to one reader goroutine. A parked Follower belongs to
//     the log (follow.mu), and the writer feeds it after each append; it
//     goes back to its reader on a short push, a cut or Close.
//   - A batch is shared by reference count: the writer, the recent slot and
//     each reader sending from it hold one.
//   - Atomics, read without a lock: durable (raised by the syncer, lowered
//     only by a cut), appending (the writer), cuts (a cut, under mu),
//     watched (Changed sets it, a wake clears it), segment.synced (the
//     syncer, a cut, recovery) and Store.prunePending.
//
// Lock order (take the earlier before the later, never the reverse):
//
//	Store.writeMu > Log.wmu > Store.mu > syncer.syncMu > Log.follow.mu > Log.mu > syncer.mu, timeIndex.mu, timeIndex.fmu, Log.culpritMu, damagedArea.mu
//
// The last five are leaves: nothing is taken under them. Store.snapMu is a
// leaf too, taken under no other lock. Store.mu is taken under Log.wmu (a
// rolling append asks Hold what the snapshot needs), so nothing waits for
// the writer with Store.mu held; Store.Close holds writeMu instead.
// Retention's OnTrim only tries writeMu (TryLock), so it may run under wmu.
// Store.mu and Log.mu are never held across disk I/O on the append or
// serving paths: the writer takes Log.mu only to move the end. A cut is the
// exception: it holds Log.mu while it truncates. Log.wmu and syncer.syncMu
// are held across writes and fsyncs, and are taken only by the writer, the
// syncer, SyncNow (the link's ACK loop, for WAIT), a cut and Close.
package backlog
