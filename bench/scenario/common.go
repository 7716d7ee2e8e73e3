package main

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
	"golang.org/x/sys/unix"
)

// env starts a scenario's processes through redisproc, whose Program owns
// them: one Close, also after Ctrl-C, leaves nothing running.
type env struct {
	*redisproc.Program
	root     string
	proxyBin string
	redisBin string
}

// child is one process of a scenario, under the name its figures use.
type child struct {
	*redisproc.Server
	name string
	env  *env // its owner, for the waits
}

// info is INFO section, or an error naming the process when it has none.
func (c *child) info(section string) (map[string]string, error) {
	if m := c.Info(section); len(m) > 0 {
		return m, nil
	}
	return nil, fmt.Errorf("%s: no answer to INFO %s", c.name, section)
}

func servers(cs []*child) []*redisproc.Server {
	out := make([]*redisproc.Server, len(cs))
	for i, c := range cs {
		out[i] = c.Server
	}
	return out
}

// startRedis runs redis-server (redisproc's defaults: no persistence, the
// scenarios measure the proxy, not Redis' disk) with extra arguments last,
// so they win.
func (e *env) startRedis(ctx context.Context, name string, extra ...string) (*child, error) {
	return e.startRedisAt(ctx, name, redisproc.Place{}, extra...)
}

// startRedisAt is startRedis in place p (a network namespace).
func (e *env) startRedisAt(ctx context.Context, name string, p redisproc.Place, extra ...string) (c *child, err error) {
	err = e.Try(func() {
		bin := redisproc.Binary{Path: e.redisBin}
		if p.Host == "" {
			c = &child{redisproc.StartBinary(e, bin, extra...), name, e}
		} else {
			c = &child{redisproc.StartAt(e, bin, p, extra...), name, e}
		}
	})
	return c, err
}

// startProxy runs the replproxy binary with a config file for the settings
// that have no flag; the listen address is a flag so a retry can change it.
func (e *env) startProxy(ctx context.Context, name, config string) (*child, error) {
	return e.startProxyAt(ctx, name, config, redisproc.Place{})
}

// startProxyAt is startProxy in place p, whose Dial reaches it there.
func (e *env) startProxyAt(ctx context.Context, name, config string, p redisproc.Place) (c *child, err error) {
	err = e.Try(func() {
		cfgPath := filepath.Join(e.TempDir(), "config.yaml")
		if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
			e.Fatalf("%s: %v", name, err)
		}
		args := func(addr string) []string {
			return []string{"run", "--config", cfgPath, "--listen", addr, "--data-dir", "data", "--log-format", "json"}
		}
		c = &child{redisproc.StartCommand(e, redisproc.Command{Path: e.proxyBin, Args: args}, p), name, e}
	})
	return c, err
}

// startMaster starts an empty master with no output-buffer limit toward its
// replica, the proxy: a proxy that falls behind should show up as lag in
// the figures, not as a disconnect and a full resync that hide it.
func (b *bench) startMaster(ctx context.Context, name string) (*child, error) {
	return b.env.startRedis(ctx, name, "--client-output-buffer-limit", "replica 0 0 0")
}

func (b *bench) proxyConfig(master *child, maxBytes int64, fsync string) string {
	return fmt.Sprintf(`master:
  addr: %s
backlog:
  max_bytes: %d
  segment_bytes: %d
  fsync: %s
snapshot:
  # No rdb-only refresh during a run: it forks the master and would mix a
  # second transfer into the figures.
  refresh_after: %d
log:
  level: info
`, master.Addr(), maxBytes, int64(b.opt.segmentMiB)<<20, fsync, 4*maxBytes)
}

// startProxy starts a proxy of master and waits until it streams.
func (b *bench) startProxy(ctx context.Context, name string, master *child, maxBytes int64, fsync string) (*child, error) {
	p, err := b.env.startProxy(ctx, name, b.proxyConfig(master, maxBytes, fsync))
	if err != nil {
		return nil, err
	}
	return p, waitInSync(ctx, time.Minute, master, []*child{p})
}

// startProxyBin starts a proxy of master from another replproxy binary, to
// compare two builds on the same stream at the same moment.
func (b *bench) startProxyBin(ctx context.Context, name, bin string, master *child) (*child, error) {
	saved := b.env.proxyBin
	b.env.proxyBin = bin
	defer func() { b.env.proxyBin = saved }()
	return b.startProxy(ctx, name, master, 2<<30, "everysec")
}

func (b *bench) startReplica(ctx context.Context, name string, of *child) (*child, error) {
	return b.env.startRedis(ctx, name, "--replicaof", of.Host, strconv.Itoa(of.Port))
}

// startReplicas starts n replicas of of (none if nil) one after the other.
func (b *bench) startReplicas(ctx context.Context, prefix string, of *child, n int, extra ...string) ([]*child, error) {
	rs := make([]*child, n)
	for i := range rs {
		var err error
		args := extra
		if of != nil {
			args = append([]string{"--replicaof", of.Host, strconv.Itoa(of.Port)}, extra...)
		}
		if rs[i], err = b.env.startRedis(ctx, fmt.Sprintf("%s%02d", prefix, i+1), args...); err != nil {
			return nil, err
		}
	}
	return rs, nil
}

func infoField(c *child, section, key string) (int64, error) {
	n := c.InfoInt(section, key)
	if n < 0 {
		return -1, fmt.Errorf("%s: INFO %s has no %s", c.name, section, key)
	}
	return n, nil
}

func infoInt(m map[string]string, key string) int64 {
	n, err := strconv.ParseInt(m[key], 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// waitProxyCaughtUp waits until the proxy holds everything the master has
// written so far.
func waitProxyCaughtUp(ctx context.Context, timeout time.Duration, master, proxy *child) error {
	return waitInSync(ctx, timeout, master, []*child{proxy})
}

// replicasBehind sums how many stream bytes the replicas still miss, and
// counts those whose link is up. Stopped replicas must not be asked: they
// would not answer.
func replicasBehind(master *child, replicas []*child) (behind int64, up int, err error) {
	m, err := infoField(master, "replication", "master_repl_offset")
	if err != nil {
		return -1, 0, err
	}
	for _, r := range replicas {
		info, err := r.info("replication")
		if err != nil {
			return -1, 0, err
		}
		behind += max(m-max(infoInt(info, "slave_repl_offset"), 0), 0)
		if info["master_link_status"] == "up" {
			up++
		}
	}
	return behind, up, nil
}

// waitInSync waits until every replica (or proxy) holds the master's
// offset with its link up; it compares no digests, which would cost the
// measured processes CPU.
func waitInSync(ctx context.Context, timeout time.Duration, master *child, replicas []*child) error {
	e := master.env
	return e.Try(func() {
		redisproc.WaitCaughtUp(e, timeout, master.Server, servers(replicas)...)
	})
}

// fan is a master, a proxy of it and replicas of the proxy, all in sync.
type fan struct {
	master, proxy *child
	replicas      []*child
	off0          int64 // the master's offset once they were in sync
}

// startFan starts a fan of n replicas, its processes named from prefix.
func (b *bench) startFan(ctx context.Context, prefix string, maxBytes int64, n int) (f fan, err error) {
	if f.master, err = b.startMaster(ctx, prefix+"-master"); err != nil {
		return f, err
	}
	if f.proxy, err = b.startProxy(ctx, prefix+"-proxy", f.master, maxBytes, "everysec"); err != nil {
		return f, err
	}
	if f.replicas, err = b.startReplicas(ctx, prefix+"-replica", f.proxy, n); err != nil {
		return f, err
	}
	if err := waitInSync(ctx, 2*time.Minute, f.master, f.replicas); err != nil {
		return f, err
	}
	f.off0, err = infoField(f.master, "replication", "master_repl_offset")
	return f, err
}

// sampleWhile runs load and calls sample every interval until load returns
// (with its error) or ctx ends.
func sampleWhile(ctx context.Context, interval time.Duration, load func() error, sample func()) error {
	done := make(chan error, 1)
	go func() { done <- load() }()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-tick.C:
			sample()
		case <-ctx.Done():
			<-done // the load watches ctx too
			return ctx.Err()
		}
	}
}

// evictBacklog drops the proxy's segment files from the page cache, so a
// catch-up reads them from the disk. POSIX_FADV_DONTNEED needs no privilege,
// unlike /proc/sys/vm/drop_caches, but only drops clean pages: each file is
// fsynced first. On a VM the host may still cache the disk image, so this is
// "cold-ish", not a guaranteed disk read.
func evictBacklog(dataDir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(filepath.Join(dataDir, "log"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".seg") {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := f.Sync(); err != nil {
			return err
		}
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
			return fmt.Errorf("fadvise %s: %w", path, err)
		}
		info, err := f.Stat()
		if err == nil {
			total += info.Size()
		}
		return nil
	})
	return total, err
}

func proxyDataDir(p *child) string { return filepath.Join(p.Dir, "data") }

// proxySyncs reads the downstream sync counters, to tell a partial catch-up
// from a full resync in the results.
func proxySyncs(p *child) (full, partial int64) {
	m, err := p.info("stats")
	if err != nil {
		return -1, -1
	}
	return infoInt(m, "sync_full"), infoInt(m, "sync_partial_ok")
}

// describeLagging prints what an operator would look at first for each
// replica that is not in sync: whether it runs, its view of the link, and
// the end of its log.
func (b *bench) describeLagging(master *child, replicas []*child) {
	m, _ := infoField(master, "replication", "master_repl_offset")
	for _, r := range replicas {
		info, err := r.info("replication")
		if err == nil && info["master_link_status"] == "up" && infoInt(info, "slave_repl_offset") >= m {
			continue
		}
		b.printf("   %s (pid %d, running %v, dir %s):", r.name, r.PID(), r.Running(), r.Dir)
		if err != nil {
			b.printf(" INFO failed: %v\n", err)
		} else {
			b.printf(" link %s, offset %s, sync in progress %s\n", info["master_link_status"],
				info["slave_repl_offset"], info["master_sync_in_progress"])
		}
		for _, l := range strings.Split(r.LogTail(8), "\n") {
			b.printf("      %s\n", l)
		}
	}
}
