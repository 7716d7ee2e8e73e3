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

	"golang.org/x/sys/unix"
)

// startMaster starts an empty master with no output-buffer limit toward its
// replica, the proxy: a proxy that falls behind should show up as lag in
// the figures, not as a disconnect and a full resync that hide it.
func (b *bench) startMaster(ctx context.Context, name string) (*child, error) {
	m, err := b.env.startRedis(ctx, name)
	if err != nil {
		return nil, err
	}
	if _, err := m.do("CONFIG", "SET", "client-output-buffer-limit", "replica 0 0 0"); err != nil {
		return nil, fmt.Errorf("%s: CONFIG SET: %w", name, err)
	}
	return m, nil
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
`, master.addr(), maxBytes, int64(b.opt.segmentMiB)<<20, fsync, 4*maxBytes)
}

// startProxy starts a proxy of master and waits until it streams.
func (b *bench) startProxy(ctx context.Context, name string, master *child, maxBytes int64, fsync string) (*child, error) {
	p, err := b.env.startProxy(ctx, name, b.proxyConfig(master, maxBytes, fsync))
	if err != nil {
		return nil, err
	}
	err = waitFor(ctx, time.Minute, name+" to sync from the master", func() (bool, string, error) {
		done, lag, err := proxyCaughtUp(master, p)
		return done, fmt.Sprintf("%d bytes behind", lag), err
	})
	return p, err
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
	return b.env.startRedis(ctx, name, "--replicaof", "127.0.0.1", strconv.Itoa(of.port))
}

// waitFor polls cond until it holds. Errors from cond are retried until
// the timeout (a server may be restarting); the last one is reported.
func waitFor(ctx context.Context, timeout time.Duration, what string, cond func() (bool, string, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, state, err := cond()
		if ok && err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				state = err.Error()
			}
			return fmt.Errorf("timed out after %s waiting for %s (%s)", timeout, what, state)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func infoField(c *child, section, key string) (int64, error) {
	m, err := c.info(section)
	if err != nil {
		return -1, fmt.Errorf("%s: %w", c.name, err)
	}
	n := infoInt(m, key)
	if n < 0 {
		return -1, fmt.Errorf("%s: INFO %s has no %s", c.name, section, key)
	}
	return n, nil
}

// proxyCaughtUp says whether the proxy holds every byte the master had
// produced when asked; the master is read first, so it is never behind.
// waitProxyCaughtUp waits until the proxy holds everything the master has
// written so far.
func waitProxyCaughtUp(ctx context.Context, timeout time.Duration, master, proxy *child) error {
	return waitFor(ctx, timeout, "the proxy to hold the master's writes", func() (bool, string, error) {
		done, lag, err := proxyCaughtUp(master, proxy)
		return done, fmt.Sprintf("%d bytes behind the master", lag), err
	})
}

func proxyCaughtUp(master, proxy *child) (bool, int64, error) {
	m, err := infoField(master, "replication", "master_repl_offset")
	if err != nil {
		return false, -1, err
	}
	p, err := infoField(proxy, "replication", "master_repl_offset")
	if err != nil {
		return false, -1, err
	}
	return p >= m, max(m-p, 0), nil
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
			return -1, 0, fmt.Errorf("%s: %w", r.name, err)
		}
		off := infoInt(info, "slave_repl_offset")
		if off < 0 {
			off = 0
		}
		behind += max(m-off, 0)
		if info["master_link_status"] == "up" {
			up++
		}
	}
	return behind, up, nil
}

// waitInSync waits until every replica has the master's offset with its
// link up.
func waitInSync(ctx context.Context, timeout time.Duration, master *child, replicas []*child) error {
	return waitFor(ctx, timeout, fmt.Sprintf("%d replica(s) to be in sync", len(replicas)), func() (bool, string, error) {
		behind, up, err := replicasBehind(master, replicas)
		return behind == 0 && up == len(replicas), fmt.Sprintf("%d bytes behind, %d/%d links up", behind, up, len(replicas)), err
	})
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

func proxyDataDir(p *child) string { return filepath.Join(p.dir, "data") }

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
		b.printf("   %s (pid %d, alive %v, dir %s):", r.name, r.pid(), r.alive(), r.dir)
		if err != nil {
			b.printf(" INFO failed: %v\n", err)
		} else {
			b.printf(" link %s, offset %s, sync in progress %s\n", info["master_link_status"],
				info["slave_repl_offset"], info["master_sync_in_progress"])
		}
		if raw, err := os.ReadFile(filepath.Join(r.dir, "redis.log")); err == nil {
			lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
			for _, l := range lines[max(0, len(lines)-8):] {
				b.printf("      %s\n", l)
			}
		}
	}
}
