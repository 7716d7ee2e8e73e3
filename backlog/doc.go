// Package backlog is the proxy's replication state on disk: the meta file,
// the snapshot, and the log of stream bytes addressed by the master's
// offsets. Layout names every path in the data dir.
//
// Who owns what:
//   - Store: the meta writers take writeMu: Reset and ShiftID (the upstream
//     link), AdoptSnapshot (the link or the refresher). Appends and Resume
//     are the link's alone; everyone else reads (View, State). mu guards
//     meta and log; snapMu the names of the snapshot checked or damaged.
//   - Log: the writer (AppendBatch, under wmu) owns the active segment's
//     files, the prepared next segment, recBuf, lastTrim, holding and the
//     time index. It writes the page cache with plain system calls only,
//     never raw ones (internal/rawsock says why), and publishes an append's
//     bytes only once they and their index record are written. mu guards
//     segs, first, end, each segment's size, changed, recent, closed,
//     active, rewound, resume, broken and unfinished.
//   - A cut (a failed fsync, found by the syncer or SyncNow; damage, found
//     by a sender or the scrub) takes the writer's place under wmu, and
//     rewrites active and the files as a roll does.
//   - The syncer owns fsync and the rolled segments until they are synced,
//     sealed and closed; its mu guards retired, target, failed and stats.
//   - A Cursor belongs to one reader goroutine; a parked Follower to the log
//     (follow.mu), which pushes to it after each append and hands it back
//     on a short push, a cut or Close. A batch is shared by reference count.
//   - Atomics, read without a lock: durable (raised by syncs, lowered by a
//     cut), appending (the writer), cuts (a cut, under mu), watched,
//     segment.synced and Store.prunePending.
//
// Lock order (take the earlier before the later, never the reverse):
//
//	Store.writeMu > Log.wmu > Store.mu > syncer.syncMu > Log.follow.mu > Log.mu > syncer.mu, timeIndex.mu, timeIndex.fmu, Log.culpritMu, damagedArea.mu
//
// Nothing is taken under the last five, nor under Store.snapMu. A rolling
// append asks Hold what the snapshot needs (Store.mu under Log.wmu), so
// nothing waits for the writer with Store.mu held: Store.Close holds writeMu
// instead. Retention's OnTrim only tries writeMu (TryLock). Store.mu
// and Log.mu are never held across disk I/O on the append or serving paths:
// the writer takes Log.mu only to move the end. A cut is the exception: it
// holds Log.mu while it truncates. Log.wmu and syncer.syncMu are held
// across writes and fsyncs, and are taken only by the writer, the syncer,
// SyncNow (the link's ACK loop, for WAIT), a cut and Close.
// TestLockOrderOfTheSource checks it; TestLockOrderUnderEverythingAtOnce too.
package backlog
