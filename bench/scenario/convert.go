package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/rdbconvert"
)

// convertChildEnv makes this binary a conversion child: "in|out" converts
// the RDB in for Redis 7.2 into out, as the proxy does, and prints its
// stats and VmHWM.
const convertChildEnv = "REPLPROXY_BENCH_CONVERT"

func runConvertIfAsked() {
	spec := os.Getenv(convertChildEnv)
	if spec == "" {
		return
	}
	in, out, _ := strings.Cut(spec, "|")
	st, err := convertFile(in, out)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	mem, _ := readMem(os.Getpid())
	fmt.Printf("keys=%d reencoded=%d hwm=%d\n", st.Keys, st.Reencoded, mem.Peak)
	os.Exit(0)
}

func convertFile(in, out string) (rdbconvert.Stats, error) {
	src, err := os.Open(in)
	if err != nil {
		return rdbconvert.Stats{}, err
	}
	defer src.Close()
	dst, err := os.Create(out)
	if err != nil {
		return rdbconvert.Stats{}, err
	}
	defer dst.Close()
	target, _ := rdbconvert.ParseFormat("redis-7.2")
	fi, err := src.Stat()
	if err != nil {
		return rdbconvert.Stats{}, err
	}
	// Sized as the proxy passes the stored snapshot.
	st, err := rdbconvert.Convert(context.Background(), io.LimitReader(src, fi.Size()), dst, target, false)
	if err == nil {
		err = dst.Close()
	}
	return st, err
}

// convert builds a Redis 7.4 RDB of -convert-gib GiB with many keys, some
// hashes of 7.4's newer type (re-encoded) and one large key, converts it
// for Redis 7.2 in a child process with rdbconvert (what the proxy runs),
// samples the child's RSS, and loads the result into Redis 7.2.
func (b *bench) convert(ctx context.Context) error {
	const valueBytes, hashes, largest = 1000, 10000, 32 << 20
	keys := int(b.opt.convertGiB * (1 << 30) / (valueBytes + 40))
	b.printf("\n== convert: a Redis 7.4.1 RDB of %.2f GiB (%d strings of %d bytes, %d 7.4 hashes, one %d MiB string)\n",
		b.opt.convertGiB, keys, valueBytes, hashes, largest>>20)
	b.printf("   converted for Redis 7.2 by rdbconvert in a child process; its RSS sampled every 100 ms\n")
	dir := filepath.Join(b.env.root, "convert")
	master, err := b.startBuilt(ctx, "convert-master", "redis-7.4.1", "--rdbcompression", "no", "--enable-debug-command", "yes")
	if err != nil {
		return err
	}
	if _, err := master.DoWithin(10*time.Minute, "DEBUG", "POPULATE", strconv.Itoa(keys), "key", strconv.Itoa(valueBytes)); err != nil {
		return fmt.Errorf("populate: %w", err)
	}
	for i := 0; i < hashes; i++ {
		h := "hash:" + strconv.Itoa(i)
		for _, cmd := range [][]string{{"HSET", h, "a", "1", "b", "2"}, {"HPEXPIRE", h, "3600000", "FIELDS", "1", "a"}, {"HPERSIST", h, "FIELDS", "1", "a"}} {
			if _, err := master.Do(anys(cmd)...); err != nil {
				return fmt.Errorf("%v: %w", cmd, err)
			}
		}
	}
	if _, err := master.Do("SETRANGE", "largest", strconv.Itoa(largest-1), "x"); err != nil {
		return err
	}
	if _, err := master.DoWithin(10*time.Minute, "SAVE"); err != nil {
		return fmt.Errorf("save: %w", err)
	}
	master.Kill()
	in, out := filepath.Join(master.Dir, "dump.rdb"), filepath.Join(dir, "converted.rdb")
	fi, err := os.Stat(in)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}

	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, self)
	cmd.Env = append(os.Environ(), convertChildEnv+"="+in+"|"+out)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	var peak int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for t := time.NewTicker(100 * time.Millisecond); ; <-t.C {
			if m, err := readMem(cmd.Process.Pid); err == nil {
				peak = max(peak, m.RSS, m.Peak)
			} else {
				return
			}
		}
	}()
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("conversion child: %w", err)
	}
	took := time.Since(start)
	<-done
	var ck, cr, hwm int64
	fmt.Sscanf(line, "keys=%d reencoded=%d hwm=%d", &ck, &cr, &hwm)
	peak = max(peak, hwm)
	ofi, err := os.Stat(out)
	if err != nil {
		return err
	}
	b.printf("   RDB %.0f MiB -> %.0f MiB in %.1f s (%.0f MB/s); %d keys, %d re-encoded\n",
		mib(fi.Size()), mib(ofi.Size()), took.Seconds(), mbps(fi.Size(), took), ck, cr)
	verdict := "under"
	if peak > rssTarget+largest {
		verdict = "OVER"
	}
	b.printf("   child VmHWM %.1f MiB: %s 64 MiB + the largest key (%d MiB)\n", mib(peak), verdict, largest>>20)

	old, err := b.startBuilt(ctx, "convert-old", "redis-7.2.6", "--dir", dir, "--dbfilename", "converted.rdb")
	if err != nil {
		return fmt.Errorf("Redis 7.2 loading the conversion: %w", err)
	}
	n, err := old.Do("DBSIZE")
	if err != nil {
		return err
	}
	b.printf("   Redis 7.2.6 loaded it: DBSIZE %v (want %d)\n", n, keys+hashes+1)
	old.Kill()
	return nil
}

// startBuilt starts a server of a build in internal/redisproc's versions
// dir (make compat builds them).
func (b *bench) startBuilt(ctx context.Context, name, build string, extra ...string) (*child, error) {
	bin := filepath.Join(redisproc.VersionsDir(), build, "src", "redis-server")
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("no %s build (run make compat): %w", build, err)
	}
	saved := b.env.redisBin
	b.env.redisBin = bin
	defer func() { b.env.redisBin = saved }()
	return b.env.startRedis(ctx, name, extra...)
}

func anys(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}
