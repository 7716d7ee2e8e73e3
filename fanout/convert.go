package fanout

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hdt3213/rdb/crc64jones"
	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/rdbconvert"
)

// ConvertStats are the conversion counters INFO reports.
type ConvertStats struct {
	Conversions   atomic.Int64 // finished conversions
	Refused       atomic.Int64 // full syncs refused: the target cannot hold the data
	LostFieldTTLs atomic.Int64 // with rdb_convert_lossy: hash field TTLs dropped
	LostKeys      atomic.Int64 // with rdb_convert_lossy: keys left out
}

// converter re-encodes the stored snapshot once per snapshot for every
// replica that cannot load its format, and shares the result. A
// conversion runs while some replica waits for it; when the last one
// leaves, it is cancelled.
type converter struct {
	dir   string
	lossy bool
	rate  int64 // source bytes per second (0: no limit)
	log   zerolog.Logger
	stats *ConvertStats

	mu   sync.Mutex
	jobs map[string]*convJob // by source snapshot file
	// running is the conversions' goroutines, waited for at shutdown
	// (their last waiters have cancelled them) so none outlives the
	// server with its temp file still there.
	running sync.WaitGroup
}

type convJob struct {
	key      string // source snapshot and written RDB version
	src      backlog.SnapshotInfo
	path     string // the stored snapshot's path
	cancel   context.CancelCauseFunc
	done     chan struct{}
	waiters  int // guarded by converter.mu
	target   string
	started  time.Time
	progress rdbconvert.Progress
	// Set before done is closed.
	out   backlog.SnapshotInfo // the converted file (File is a path)
	err   error
	stats rdbconvert.Stats
}

func newConverter(dir string, lossy bool, rate int64, log zerolog.Logger, stats *ConvertStats) *converter {
	if dir != "" {
		// Left by a previous process: the conversions are redone on demand.
		os.RemoveAll(dir)
	}
	return &converter{dir: dir, lossy: lossy, rate: rate, log: log, stats: stats, jobs: map[string]*convJob{}}
}

// errConversion marks a conversion that failed, as opposed to the
// replica leaving while it waited.
var errConversion = errors.New("snapshot conversion failed")

// errSnapshotReplaced ends the conversion of a snapshot a newer one has
// replaced: its waiters sync again, from the newer one, with no refusal.
var errSnapshotReplaced = errors.New("snapshot replaced by a newer one during its conversion")

// rdbTarget is the format this replica loads: announced (Valkey 8+), or
// configured; zero if neither, and the snapshot is served as stored.
func (r *replica) rdbTarget() rdbconvert.Format {
	if f, ok := rdbconvert.ForValkey(r.version); ok {
		return f
	}
	if !r.userFormat.IsZero() {
		return r.userFormat
	}
	return r.srv.cfg.RDBFormat
}

func (c *client) userFormat() rdbconvert.Format {
	if c.user == nil {
		return rdbconvert.Format{}
	}
	return c.srv.cfg.UserRDBFormats[c.user.Name]
}

// convertFor returns what this replica is served: the stored snapshot if
// its format suits the replica, or else the shared conversion, with the
// snapshot's offset. The caller closes the returned file (f itself when
// nothing was converted).
func (r *replica) convertFor(ctx context.Context, f *os.File, snap backlog.SnapshotInfo) (*os.File, backlog.SnapshotInfo, error) {
	target := r.rdbTarget()
	if target.IsZero() || r.srv.conv == nil {
		return f, snap, nil
	}
	meta := r.srv.pacer.snapshotMeta(f, snap)
	if meta.Magic == "" || target.Loads(meta.Magic, meta.Version) {
		return f, snap, nil
	}
	for attempt := 0; ; attempt++ {
		out, err := r.srv.conv.wait(ctx, f.Name(), snap, target, r)
		if err != nil {
			return nil, snap, err
		}
		cf, err := openConverted(out)
		if err == nil {
			r.log.Info().Str("rdb_header", meta.Header()).Str("target", target.Name).Int64("rdb_bytes", out.Size).
				Str("file", filepath.Base(out.File)).Msg("serving the snapshot converted for the replica's format")
			return cf, out, nil
		}
		if attempt > 0 {
			return nil, snap, fmt.Errorf("%w: %w", errConversion, err)
		}
		r.log.Error().Err(err).Msg("converted snapshot damaged: it is not served; converting the snapshot again")
		r.srv.conv.discard(snap, target)
	}
}

// openConverted opens a conversion and checks it against the size and
// CRC-64 taken as it was written: every full sync from it checks it, as
// it is served rarely and only from this file.
func openConverted(out backlog.SnapshotInfo) (*os.File, error) {
	cf, err := os.Open(out.File)
	if err != nil {
		return nil, fmt.Errorf("open converted snapshot: %w", err)
	}
	h := crc64jones.New()
	n, err := io.Copy(h, cf)
	switch {
	case err != nil:
		err = fmt.Errorf("read converted snapshot %s: %w", out.File, err)
	case n != out.Size:
		err = fmt.Errorf("converted snapshot %s has %d bytes, %d were written", out.File, n, out.Size)
	case fmt.Sprintf("%016x", h.Sum64()) != out.CRC64:
		err = fmt.Errorf("converted snapshot %s: CRC-64 %016x, %s was written", out.File, h.Sum64(), out.CRC64)
	}
	if err == nil {
		_, err = cf.Seek(0, io.SeekStart)
	}
	if err != nil {
		cf.Close()
		return nil, err
	}
	return cf, nil
}

// discard forgets snap's finished conversion for target and removes it.
func (c *converter) discard(snap backlog.SnapshotInfo, target rdbconvert.Format) {
	c.mu.Lock()
	defer c.mu.Unlock()
	key := convKey(snap, target)
	j := c.jobs[key]
	if j == nil {
		return
	}
	select {
	case <-j.done:
		os.Remove(j.out.File)
		delete(c.jobs, key)
	default: // a new one runs already
	}
}

func convKey(snap backlog.SnapshotInfo, target rdbconvert.Format) string {
	return snap.File + "/" + strconv.Itoa(target.Written())
}

// wait joins or starts the conversion of snap for target, sending the
// newlines that keep a waiting replica patient.
func (c *converter) wait(ctx context.Context, path string, snap backlog.SnapshotInfo, target rdbconvert.Format, r *replica) (backlog.SnapshotInfo, error) {
	j := c.join(path, snap, target)
	defer c.leave(j)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-j.done:
			if errors.Is(j.err, errSnapshotReplaced) {
				return j.out, j.err
			}
			if j.err != nil {
				return j.out, fmt.Errorf("%w: %w", errConversion, j.err)
			}
			return j.out, nil
		case <-ctx.Done():
			return backlog.SnapshotInfo{}, context.Cause(ctx)
		case <-tick.C:
			if err := r.write([]byte("\n")); err != nil {
				return backlog.SnapshotInfo{}, err
			}
		}
	}
}

// join returns the job for snap, starting it if none runs or is done.
// Targets that load the same RDB version share one job.
func (c *converter) join(path string, snap backlog.SnapshotInfo, target rdbconvert.Format) *convJob {
	c.mu.Lock()
	defer c.mu.Unlock()
	key := convKey(snap, target)
	if j := c.jobs[key]; j != nil && !j.failed() {
		j.waiters++
		return j
	}
	for name, old := range c.jobs {
		if old.src.File == snap.File && name != key {
			continue
		}
		// A newer snapshot replaces the older's conversion; a replica
		// reading it keeps its open handle.
		old.cancel(errSnapshotReplaced)
		select {
		case <-old.done:
			if old.out.File != "" {
				os.Remove(old.out.File)
			}
		default: // its run removes its temp file
		}
		delete(c.jobs, name)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	j := &convJob{key: key, src: snap, path: path, cancel: cancel, done: make(chan struct{}), waiters: 1,
		target: target.Name, started: time.Now()}
	c.jobs[key] = j
	c.running.Go(func() { c.run(ctx, j, target) })
	return j
}

// failed reports a job that ended in an error worth retrying: anything
// but data the target cannot hold, which the same snapshot holds again.
func (j *convJob) failed() bool {
	select {
	case <-j.done:
		return j.err != nil && !errors.Is(j.err, rdbconvert.ErrUnsupported)
	default:
		return false
	}
}

// leave cancels an unfinished job no replica waits for any more.
func (c *converter) leave(j *convJob) {
	c.mu.Lock()
	defer c.mu.Unlock()
	j.waiters--
	select {
	case <-j.done:
		return
	default:
	}
	if j.waiters == 0 {
		j.cancel(errors.New("no replica waits for the conversion"))
		if c.jobs[j.key] == j {
			delete(c.jobs, j.key)
		}
	}
}

func (c *converter) run(ctx context.Context, j *convJob, target rdbconvert.Format) {
	defer close(j.done)
	start := time.Now()
	c.log.Info().Str("snapshot", j.src.File).Int64("offset", j.src.Offset).Str("target", target.Name).
		Msg("converting the snapshot for replicas that cannot load its format")
	j.out, j.stats, j.err = c.convert(ctx, j, target)
	if j.err != nil && errors.Is(context.Cause(ctx), errSnapshotReplaced) && !errors.Is(j.err, errSnapshotReplaced) {
		// Stopped from inside the converter, which may not carry the cause.
		j.err = fmt.Errorf("%w: %w", errSnapshotReplaced, j.err)
	}
	lost := j.stats
	c.stats.LostFieldTTLs.Add(lost.LostFieldTTLs)
	c.stats.LostKeys.Add(lost.LostKeys)
	ev := c.log.Info()
	switch {
	case errors.Is(j.err, rdbconvert.ErrUnsupported):
		c.log.Error().Err(j.err).Str("snapshot", j.src.File).Str("target", target.Name).
			Msg("snapshot conversion refused: the target cannot hold this data; replicas needing it are refused " +
				"(replicas.rdb_convert_lossy: yes converts with the loss counted)")
		return
	case j.err != nil:
		c.log.Warn().Err(j.err).Str("snapshot", j.src.File).Msg("snapshot conversion failed")
		return
	case lost.Lost():
		ev = c.log.Warn()
	}
	c.stats.Conversions.Add(1)
	ev.Str("snapshot", j.src.File).Str("target", target.Name).Int64("keys", lost.Keys).Int64("rdb_bytes", j.out.Size).
		Int64("lost_field_ttls", lost.LostFieldTTLs).Int64("lost_keys", lost.LostKeys).Int64("reencoded_keys", lost.Reencoded).
		Dur("duration_ms", time.Since(start)).Msg("snapshot converted")
}

// convert writes the conversion to a temp file, checksums it as it goes,
// and renames it beside the others once complete.
func (c *converter) convert(ctx context.Context, j *convJob, target rdbconvert.Format) (backlog.SnapshotInfo, rdbconvert.Stats, error) {
	path, src := j.path, j.src
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return backlog.SnapshotInfo{}, rdbconvert.Stats{}, fmt.Errorf("create %s: %w", c.dir, err)
	}
	in, err := os.Open(path)
	if err != nil {
		return backlog.SnapshotInfo{}, rdbconvert.Stats{}, fmt.Errorf("open snapshot: %w", err)
	}
	defer in.Close()
	tmp, err := os.CreateTemp(c.dir, "converting-*.tmp")
	if err != nil {
		return backlog.SnapshotInfo{}, rdbconvert.Stats{}, fmt.Errorf("create converted snapshot: %w", err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	defer tmp.Close()
	w := &crcWriter{w: tmp, crc: crc64jones.New()}
	var r io.Reader = in
	if c.rate > 0 {
		r = &pacedReader{ctx: ctx, r: r, lim: rate.NewLimiter(rate.Limit(c.rate), int(min(c.rate, 1<<20)))}
	}
	// Outermost: the converter takes the limit for the source's size.
	r = io.LimitReader(r, src.Size)
	st, err := rdbconvert.ConvertProgress(ctx, r, w, target, c.lossy, &j.progress)
	if err != nil {
		return backlog.SnapshotInfo{}, st, fmt.Errorf("convert snapshot %s for %s: %w", filepath.Base(src.File), target.Name, err)
	}
	if err := tmp.Close(); err != nil {
		return backlog.SnapshotInfo{}, st, fmt.Errorf("close converted snapshot: %w", err)
	}
	name := filepath.Join(c.dir, fmt.Sprintf("%s.rdb%d.rdb", filepath.Base(src.File), target.Written()))
	if err := os.Rename(tmp.Name(), name); err != nil {
		return backlog.SnapshotInfo{}, st, fmt.Errorf("rename converted snapshot: %w", err)
	}
	return backlog.SnapshotInfo{File: name, ReplID: src.ReplID, Offset: src.Offset, Size: w.n,
		CRC64: fmt.Sprintf("%016x", w.crc.Sum64())}, st, nil
}

// pacedReader reads at most its limiter's rate: a conversion reads and
// writes a snapshot's size, on the disk the backlog is written to.
type pacedReader struct {
	ctx context.Context
	r   io.Reader
	lim *rate.Limiter
}

func (p *pacedReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b[:min(len(b), p.lim.Burst())])
	if n > 0 {
		if werr := p.lim.WaitN(p.ctx, n); werr != nil {
			return n, context.Cause(p.ctx)
		}
	}
	return n, err
}

// Conversion is a conversion running now, as INFO and the log report it.
type Conversion struct {
	Snapshot string // the source snapshot's file name
	Target   string
	Done     int64 // source bytes read
	Total    int64 // the source snapshot's size
	Keys     int64 // keys written
	Started  time.Time
}

// Conversions lists the conversions running now.
func (s *Server) Conversions() []Conversion {
	if s.conv == nil {
		return nil
	}
	c := s.conv
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Conversion
	for _, j := range c.jobs {
		select {
		case <-j.done:
			continue
		default:
		}
		out = append(out, Conversion{Snapshot: filepath.Base(j.src.File), Target: j.target, Done: j.progress.Bytes.Load(),
			Total: j.src.Size, Keys: j.progress.Keys.Load(), Started: j.started})
	}
	return out
}

type crcWriter struct {
	w   io.Writer
	crc hash.Hash64
	n   int64
}

func (w *crcWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.crc.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// refuseFullSync tells a replica, before +FULLRESYNC, why it gets no
// snapshot, and paces its next tries like a failed full sync.
func (r *replica) refuseFullSync(err error) error {
	r.srv.convStats.Refused.Add(1)
	r.write([]byte("-ERR replproxy: no snapshot this replica can load: " + oneLine(err.Error()) + "\r\n"))
	p := r.srv.pacer
	p.mu.Lock()
	pp := p.peer(r.pacingKey())
	pp.failures++
	pp.delay = min(max(2*pp.delay, pacingMin), pacingMax)
	pp.notBefore = time.Now().Add(pp.delay)
	first, delay := pp.failures == 1, pp.delay
	p.mu.Unlock()
	ev := r.log.Debug()
	if first {
		ev = r.log.Warn()
	}
	ev.Err(err).Str("target", r.rdbTarget().Name).Str("replica_version", r.version).Dur("next_full_sync_in", delay).
		Msg("full sync refused: the snapshot cannot be converted for this replica; the other replicas keep streaming")
	return fmt.Errorf("full sync refused: %w", err)
}

func oneLine(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == '\r' || c == '\n' {
			b[i] = ' '
		}
	}
	return string(b)
}

// convertInfo is INFO's view of the conversions.
func (s *Server) convertInfo() []KV {
	out := []KV{
		{"rdb_conversions", strconv.FormatInt(s.convStats.Conversions.Load(), 10)},
		{"rdb_conversion_refusals", strconv.FormatInt(s.convStats.Refused.Load(), 10)},
		{"rdb_conversion_lost_field_ttls", strconv.FormatInt(s.convStats.LostFieldTTLs.Load(), 10)},
		{"rdb_conversion_lost_keys", strconv.FormatInt(s.convStats.LostKeys.Load(), 10)},
	}
	// Summed over the running conversions: one per snapshot and RDB
	// version, so rarely more than one.
	var done, total, keys int64
	running := s.Conversions()
	for _, cv := range running {
		done, total, keys = done+cv.Done, total+cv.Total, keys+cv.Keys
	}
	return append(out,
		KV{"rdb_conversions_in_progress", strconv.Itoa(len(running))},
		KV{"rdb_conversion_bytes_done", strconv.FormatInt(done, 10)},
		KV{"rdb_conversion_bytes_total", strconv.FormatInt(total, 10)},
		KV{"rdb_conversion_keys", strconv.FormatInt(keys, 10)})
}
