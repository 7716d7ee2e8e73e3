package fanout

import (
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/replproxy/replproxy/rdbconvert"
	"github.com/replproxy/replproxy/rdbmeta"
)

// sinceVersions is the first Redis and Valkey release (major<<8|minor)
// that knows a command; 0: none does yet.
type sinceVersions struct{ redis, valkey int }

func ver(major, minor int) int { return major<<8 | minor }

// newerCommands are the commands a master's replication stream may carry
// that some server a replica may run does not know. Only what a master
// propagates is listed: a read-only command never reaches the stream.
// Redis 7.4 sends HEXPIRE and HPEXPIRE as HPEXPIREAT. The 7.0 to 7.4
// rows were checked against COMMAND LIST of each server; the later ones
// come from the release notes.
var newerCommands = map[string]sinceVersions{
	"FUNCTION":   {redis: ver(7, 0), valkey: ver(7, 2)},
	"HEXPIRE":    {redis: ver(7, 4), valkey: ver(9, 0)},
	"HPEXPIRE":   {redis: ver(7, 4), valkey: ver(9, 0)},
	"HEXPIREAT":  {redis: ver(7, 4), valkey: ver(9, 0)},
	"HPEXPIREAT": {redis: ver(7, 4), valkey: ver(9, 0)},
	"HPERSIST":   {redis: ver(7, 4), valkey: ver(9, 0)},
	"HSETEX":     {redis: ver(8, 0), valkey: ver(9, 0)},
	"HGETEX":     {redis: ver(8, 0), valkey: ver(9, 0)},
	"HGETDEL":    {redis: ver(8, 0)},
	"VADD":       {redis: ver(8, 0)},
	"VREM":       {redis: ver(8, 0)},
	"VSETATTR":   {redis: ver(8, 0)},
	"XDELEX":     {redis: ver(8, 2)},
	"XACKDEL":    {redis: ver(8, 2)},
	"DELIFEQ":    {valkey: ver(9, 0)},
}

// server is a kind of server and its release, as major<<8|minor.
type server struct {
	valkey  bool
	version int
}

func (s server) knows(cmd string) bool {
	since, listed := newerCommands[cmd]
	if !listed {
		return true
	}
	v := since.redis
	if s.valkey {
		v = since.valkey
	}
	return v != 0 && s.version >= v
}

// parseServer reads "7.4.1" or "7.4" for a Redis or Valkey server.
func parseServer(valkey bool, version string) (server, bool) {
	parts := strings.SplitN(version, ".", 3)
	if len(parts) < 2 {
		return server{}, false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil || major < 0 || minor < 0 || minor > 255 {
		return server{}, false
	}
	return server{valkey: valkey, version: ver(major, minor)}, true
}

// formatServer is the server a target format names ("redis-7.2").
func formatServer(f rdbconvert.Format) (server, bool) {
	kind, version, ok := strings.Cut(f.Name, "-")
	if !ok || (kind != "redis" && kind != "valkey") {
		return server{}, false
	}
	return parseServer(kind == "valkey", version)
}

// snapshotServer is the server that wrote the snapshot: the master.
func snapshotServer(meta rdbmeta.Info) (server, bool) {
	if meta.ValkeyVer != "" {
		return parseServer(true, meta.ValkeyVer)
	}
	return parseServer(false, meta.RedisVer)
}

// unknownTo lists the commands the master may send that the target does
// not know; all the target does not know when the master is unknown.
func unknownTo(target, master server, masterKnown bool) map[string]bool {
	out := map[string]bool{}
	for cmd := range newerCommands {
		if !target.knows(cmd) && (!masterKnown || master.knows(cmd)) {
			out[cmd] = true
		}
	}
	return out
}

// unknownLogEvery is how often, at most, a replica's unknown commands are
// logged again once each name has been logged at its first occurrence.
const unknownLogEvery = time.Minute

// cmdWatch follows the stream as it is relayed to one replica and counts
// the commands its server does not know. The stream goes out unchanged:
// a replica that meets such a command logs it and skips it, and its data
// no longer has that command's effect. Only the replica's sender writes
// to it.
type cmdWatch struct {
	r       *replica
	sc      *commandScanner
	unknown map[string]bool
	counts  map[string]int64 // by command, since the last log line
	seen    map[string]bool  // names already logged once
	lastLog time.Time
}

// watchCommands returns a watch for a replica whose target format is
// older than the master's, starting at from, a command boundary; nil when
// no command the master may send is unknown to the target, so a replica
// of the master's own version costs nothing.
func (r *replica) watchCommands(from int64) *cmdWatch {
	target, ok := formatServer(r.rdbTarget())
	if !ok {
		return nil
	}
	master, masterKnown := r.masterServer()
	if masterKnown && master == target {
		return nil
	}
	unknown := unknownTo(target, master, masterKnown)
	if len(unknown) == 0 {
		return nil
	}
	w := &cmdWatch{r: r, sc: newCommandScanner(from, 0), unknown: unknown, counts: map[string]int64{}, seen: map[string]bool{}}
	w.sc.onCommand = w.command
	r.watched.Store(true)
	return w
}

// masterServer reads the master's version from the stored snapshot's
// header (its redis-ver or valkey-ver), while the snapshot is of the
// current replication ID: a failover shifts the ID, and the promoted
// master may run a newer version than the one that wrote the snapshot
// (unknown until the next snapshot).
func (r *replica) masterServer() (server, bool) {
	f, info, err := r.srv.cfg.Store.OpenSnapshot()
	if err != nil {
		return server{}, false
	}
	defer f.Close()
	if !strings.EqualFold(info.ReplID, r.srv.cfg.Store.State().ReplID) {
		return server{}, false
	}
	return snapshotServer(r.srv.pacer.snapshotMeta(f, info))
}

func (w *cmdWatch) command(name []byte, off int64) {
	if !w.unknown[string(name)] {
		return
	}
	r := w.r
	r.unknownCmds.Add(1)
	cmd := string(name)
	w.counts[cmd]++
	target := r.rdbTarget().Name
	// The scanner is still inside MULTI when it reports a queued command.
	inTx := w.sc.inMulti
	seenKey := cmd
	if inTx {
		seenKey += " in MULTI"
	}
	if !w.seen[seenKey] {
		w.seen[seenKey] = true
		msg := "relayed a command the replica's server does not know: it logs an error and skips it, " +
			"so its data misses that command's effect (the stream is relayed unchanged; further ones are counted)"
		if inTx {
			// Redis flags the transaction of a command it rejects, and
			// EXEC then aborts it (EXECABORT): the commands around it,
			// which the replica knows, are lost on it too.
			msg = "relayed, inside MULTI/EXEC (a transaction or a script's effects), a command the replica's server " +
				"does not know: it discards the whole transaction, so its data misses every command of it " +
				"(the stream is relayed unchanged; further ones are counted)"
		}
		r.log.Warn().Str("command", cmd).Int64("offset", off).Str("target", target).Bool("in_transaction", inTx).Msg(msg)
		// The next summary comes a minute after this line, not with the
		// command that follows it.
		w.lastLog = time.Now()
		w.counts[cmd]--
		if w.counts[cmd] == 0 {
			delete(w.counts, cmd)
		}
		return
	}
	if time.Since(w.lastLog) < unknownLogEvery {
		return
	}
	w.lastLog = time.Now()
	names := make([]string, 0, len(w.counts))
	for n := range w.counts {
		names = append(names, n)
	}
	sort.Strings(names)
	ev := r.log.Warn().Str("target", target).Int64("unknown_commands_total", r.unknownCmds.Load())
	for _, n := range names {
		ev = ev.Int64(n, w.counts[n])
	}
	ev.Msg("relayed commands the replica's server does not know since the last such line")
	clear(w.counts)
}

// observe scans bytes just sent. A stream the scanner cannot follow (a
// replica that resumed inside a command) ends the watch, with a log line:
// the stream itself is unaffected.
func (w *cmdWatch) observe(p []byte) {
	if w == nil || w.sc == nil || len(p) == 0 {
		return
	}
	if _, err := w.sc.Write(p); err != nil {
		w.r.log.Warn().Err(err).Msg("stopped counting commands unknown to the replica: the stream could not be followed")
		w.sc = nil
	}
}

// wrap returns a writer that scans what out takes; out itself when there
// is no watch.
func (w *cmdWatch) wrap(out io.Writer) io.Writer {
	if w == nil {
		return out
	}
	return watchedWriter{out: out, w: w}
}

type watchedWriter struct {
	out io.Writer
	w   *cmdWatch
}

func (ww watchedWriter) Write(p []byte) (int, error) {
	n, err := ww.out.Write(p)
	ww.w.observe(p[:n])
	return n, err
}
