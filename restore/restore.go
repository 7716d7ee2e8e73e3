package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"time"

	"github.com/replproxy/replproxy/backlog"
)

// Target says where a restore stops. Exactly one field is set.
type Target struct {
	Offset int64     // the state after this replication offset (0: unset)
	Time   time.Time // the state at this moment, to the second
	Before string    // the state just before the last command matching this pattern
}

// Options configure a restore.
type Options struct {
	DataDir     string
	Out         string // the RDB written
	Target      Target
	RedisServer string // redis-server binary (default: the one in PATH)
	TmpDir      string // where the temporary server lives (default: the system's)
	// Progress receives a line every ProgressEvery while replaying (nil: none).
	Progress      io.Writer
	ProgressEvery time.Duration
}

// Result is what a restore did.
type Result struct {
	Snapshot backlog.SnapshotInfo
	// Requested is the last offset the target asked for; Reached the last
	// offset replayed, at a command boundary outside any MULTI/EXEC.
	Requested, Reached int64
	// From is the first offset replayed (Snapshot.Offset+1); nothing was
	// replayed when Reached is Snapshot.Offset.
	From                  int64
	FromTime, ReachedTime time.Time // from the time index; zero when it does not reach
	Commands              int64     // replayed, without PING and REPLCONF
	Bytes                 int64
	Digest                string // DEBUG DIGEST of the result
	Notes                 []string
	Duration              time.Duration
}

// Rounded says the target fell inside a command or a MULTI/EXEC block.
func (r Result) Rounded() bool { return r.Reached != r.Requested }

// Run rebuilds the dataset at the target and saves it as an RDB at Out.
// It only reads the data dir, and is safe beside the proxy writing it.
func Run(ctx context.Context, opt Options) (Result, error) {
	started := time.Now()
	bin, err := redisServerPath(opt.RedisServer)
	if err != nil {
		return Result{}, err
	}
	src, err := openSource(opt.DataDir)
	if err != nil {
		return Result{}, err
	}
	defer src.close()
	var res Result
	if res.Requested, err = resolveTarget(ctx, src, opt.Target, &res); err != nil {
		return res, err
	}
	snap, err := src.intactAtOrBefore(res.Requested, &res)
	if err != nil {
		return res, err
	}
	res.Snapshot, res.From, res.Reached = snap.info, snap.info.Offset+1, snap.info.Offset
	res.FromTime = src.timeOf(res.From)
	if _, ok, err := streamDB(io.NewSectionReader(snap.f, 0, snap.info.Size)); err != nil {
		return res, fmt.Errorf("snapshot %s: %w", snap.info.File, err)
	} else if !ok {
		res.Notes = append(res.Notes, "the snapshot does not say which database the stream had selected; replay starts in db 0")
	}

	dir, err := os.MkdirTemp(opt.TmpDir, "replproxy-restore-")
	if err != nil {
		return res, fmt.Errorf("create temporary dir: %w", err)
	}
	defer os.RemoveAll(dir)
	srv, err := startTempServer(ctx, bin, dir)
	if err != nil {
		return res, err
	}
	defer srv.stop()
	if err := replicate(ctx, src, snap, srv, &res, opt); err != nil {
		return res, err
	}
	if res.Rounded() {
		res.Notes = append(res.Notes, fmt.Sprintf("offset %d falls inside a command or a MULTI/EXEC block: rounded down to %d, the last command boundary before it", res.Requested, res.Reached))
	}
	res.ReachedTime = src.timeOf(res.Reached)
	// The server stays a replica to the end: promoted, it would start
	// expiring keys whose TTL has passed.
	if res.Digest, err = srv.do("DEBUG", "DIGEST"); err != nil {
		return res, fmt.Errorf("digest of the result: %w", err)
	}
	if _, err := srv.do("SAVE"); err != nil {
		return res, fmt.Errorf("save the result: %w", err)
	}
	if err := installFile(filepath.Join(dir, resultRDB), opt.Out); err != nil {
		return res, err
	}
	res.Duration = time.Since(started)
	return res, nil
}

func redisServerPath(p string) (string, error) {
	if p == "" {
		p = "redis-server"
	}
	path, err := exec.LookPath(p)
	if err != nil {
		return "", fmt.Errorf("redis-server for the replay (--redis-server): %w", err)
	}
	return path, nil
}

// resolveTarget turns the target into the last offset it asks for.
func resolveTarget(ctx context.Context, src *source, t Target, res *Result) (int64, error) {
	end := src.end()
	set := 0
	for _, b := range []bool{t.Offset != 0, !t.Time.IsZero(), t.Before != ""} {
		if b {
			set++
		}
	}
	if set != 1 {
		return 0, errors.New("give exactly one target: an offset, a time, or a command pattern")
	}
	switch {
	case t.Offset != 0:
		if t.Offset >= end {
			return 0, fmt.Errorf("offset %d is past the stored stream, whose last whole byte is %d", t.Offset, end-1)
		}
		return t.Offset, nil
	case !t.Time.IsZero():
		return offsetAtTime(src, t.Time, res)
	}
	return offsetBefore(ctx, src, t.Before, res)
}

// offsetAtTime is the last offset appended before the second of at began.
// The time index has a point for the first append of every second with
// appends, so the bytes before the first point at or after that second are
// exactly those that arrived before it (while the index is not thinned).
func offsetAtTime(src *source, at time.Time, res *Result) (int64, error) {
	if len(src.times) == 0 {
		return 0, fmt.Errorf("the time index of %s is empty or unreadable: restore by offset or by command instead", src.logDir)
	}
	sec := at.Truncate(time.Second)
	if !sec.Equal(at) {
		res.Notes = append(res.Notes, fmt.Sprintf("the time index resolves to the second: target %s taken as %s", at.Format(time.RFC3339Nano), sec.Format(time.RFC3339)))
	}
	pts := src.times
	i := sort.Search(len(pts), func(i int) bool { return !pts[i].Time.Before(sec) })
	if i == 0 {
		return 0, fmt.Errorf("%s is before the oldest time in the backlog (%s)", sec.Format(time.RFC3339), pts[0].Time.Format(time.RFC3339))
	}
	prev := pts[i-1]
	target := src.end() - 1
	if i < len(pts) {
		target = min(pts[i].Offset-1, target)
		if gap := pts[i].Time.Truncate(time.Second).Sub(prev.Time.Truncate(time.Second)); gap > time.Second {
			res.Notes = append(res.Notes, fmt.Sprintf("no time index point between %s (offset %d) and %s (offset %d): no bytes arrived in between, or the index was thinned there and the bytes up to %d may be up to %s late",
				prev.Time.Format(time.RFC3339), prev.Offset, pts[i].Time.Format(time.RFC3339), pts[i].Offset, target, gap))
		}
	}
	return target, nil
}

// offsetBefore finds the last unit with a command matching the pattern, in
// the whole stream held, and returns the offset just before it.
func offsetBefore(ctx context.Context, src *source, pat string, res *Result) (int64, error) {
	p, err := parsePattern(pat)
	if err != nil {
		return 0, err
	}
	from := src.snaps[0].info.Offset + 1
	units, err := src.units(from, src.end())
	if err != nil {
		return 0, err
	}
	found := int64(-1)
	var what string
	for {
		u, err := units.next()
		if errors.Is(err, io.EOF) || errors.Is(err, errIncomplete) {
			break
		}
		if err != nil {
			return 0, err
		}
		if p.matchesUnit(u) {
			found, what = u.start, describe(u)
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
	}
	if found < 0 {
		return 0, fmt.Errorf("no command matching %q in offsets [%d, %d]", pat, from, src.end()-1)
	}
	res.Notes = append(res.Notes, fmt.Sprintf("last command matching %q: %s at offset %d", pat, what, found))
	return found - 1, nil
}

func describe(u unit) string {
	if len(u.cmds) > 1 {
		return fmt.Sprintf("a MULTI/EXEC block of %d commands", len(u.cmds)-2)
	}
	return u.cmds[0].name()
}

// replicate makes the temporary server a replica of a feed that serves the
// snapshot and the stream after it up to the target, rounded down to a
// unit boundary, and waits until the server has applied all of it.
func replicate(ctx context.Context, src *source, snap heldSnapshot, srv *tempServer, res *Result, opt Options) error {
	f, err := newFeed()
	if err != nil {
		return err
	}
	defer f.close()
	errorsBefore, err := srv.errorReplies()
	if err != nil {
		return err
	}
	// No expiry of its own (a replica has none) and no timeout while the
	// feed is quiet: the dataset must stay as the stream left it.
	for _, cmd := range [][]string{
		{"CONFIG", "SET", "masterauth", f.password},
		{"CONFIG", "SET", "repl-timeout", "86400"},
		{"REPLICAOF", "127.0.0.1", f.port()},
	} {
		if _, err := srv.do(cmd...); err != nil {
			return fmt.Errorf("temporary server: %s %s: %w", cmd[0], cmd[1], err)
		}
	}
	if err := f.accept(ctx, snap.info.ReplID, snap.info.Offset); err != nil {
		return fmt.Errorf("%w%s", err, srv.logTail())
	}
	if err := f.sendRDB(io.NewSectionReader(snap.f, 0, snap.info.Size), snap.info.Size); err != nil {
		return fmt.Errorf("send snapshot %s: %w%s", snap.info.File, err, srv.logTail())
	}
	if err := sendStream(ctx, src, f, res, opt); err != nil {
		return fmt.Errorf("%w%s", err, srv.logTail())
	}
	if err := f.waitAck(ctx, res.Reached, srv.exited, srv.appliedOffset); err != nil {
		return fmt.Errorf("%w%s", err, srv.logTail())
	}
	errorsAfter, err := srv.errorReplies()
	if err != nil {
		return err
	}
	if n := errorsAfter - errorsBefore; n > 0 {
		return fmt.Errorf("the temporary server rejected %d command(s) of the stream, so its dataset is not the master's%s", n, srv.logTail())
	}
	return nil
}

// sendStream sends the units after the snapshot, up to the target, byte
// for byte: PING and REPLCONF GETACK too, as a master's stream has them.
func sendStream(ctx context.Context, src *source, f *feed, res *Result, opt Options) error {
	units, err := src.units(res.From, res.Requested+1)
	if err != nil {
		return err
	}
	prog := newProgress(opt, res.Requested+1-res.From)
	for {
		u, err := units.next()
		if errors.Is(err, io.EOF) || errors.Is(err, errIncomplete) {
			break
		}
		if err != nil {
			return err
		}
		for _, c := range u.cmds {
			if err := f.write(c.raw); err != nil {
				return fmt.Errorf("replay of %s at offset %d: %w", c.name(), c.start, err)
			}
			if c.replayed() {
				res.Commands++
			}
		}
		res.Reached, res.Bytes = u.lastByte(), u.end-res.From
		if err := ctx.Err(); err != nil {
			return err
		}
		prog.maybe(res)
	}
	return f.flush()
}

// installFile copies the result to path via a temp file, fsync and rename,
// so path holds either nothing new or the whole RDB.
func installFile(from, path string) error {
	in, err := os.Open(from)
	if err != nil {
		return fmt.Errorf("open the saved RDB: %w", err)
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("fsync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("rename to %s: %w", path, err)
	}
	return nil
}

// progress reports a long replay every interval.
type progress struct {
	w          io.Writer
	every      time.Duration
	total      int64
	start, due time.Time
}

func newProgress(opt Options, total int64) *progress {
	now := time.Now()
	return &progress{w: opt.Progress, every: opt.ProgressEvery, total: total, start: now, due: now.Add(opt.ProgressEvery)}
}

func (p *progress) maybe(res *Result) {
	if p.w == nil || p.every <= 0 || time.Now().Before(p.due) {
		return
	}
	p.due = time.Now().Add(p.every)
	el := time.Since(p.start).Seconds()
	rate := float64(res.Bytes) / max(el, 1e-3)
	eta := time.Duration(float64(p.total-res.Bytes) / max(rate, 1) * float64(time.Second)).Round(time.Second)
	fmt.Fprintf(p.w, "progress: replayed %d of %d bytes (%.1f%%), %d commands, %.1f MiB/s, ETA %s\n",
		res.Bytes, p.total, 100*float64(res.Bytes)/float64(max(p.total, 1)), res.Commands, rate/(1<<20), eta)
}
