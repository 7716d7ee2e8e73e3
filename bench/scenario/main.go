// Command scenario measures replproxy end to end against real redis-server
// processes it starts on free loopback ports in a temp dir: the proxy's
// memory with a large backlog and many replicas catching up (rss), one
// replica catching up (catchup), and the proxy's ingest rate under each
// fsync policy (ingest); when named, also the fan-out scenarios (fanout-cpu,
// fanout-fullsync, fanout-rss), zstd between proxies (compress) and the
// proxy against a chained Redis replica (relay). It
// reports figures and never fails on speed; see bench/README.md for what
// each scenario does and the recorded results.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
)

type options struct {
	scenarios     []string
	gib           float64
	replicas      int
	valueBytes    int
	keys          int
	segmentMiB    int
	ingestSeconds time.Duration
	ingestValue   int
	interval      time.Duration
	evict         bool
	timeout       time.Duration
	keep          bool
	tmp           string
	proxyBin      string

	gibSet         bool // -gib given: fanout-cpu then uses it instead of its own default
	fanoutReplicas int
	fanoutRuns     int
	wideReplicas   int
	fanoutTime     time.Duration
	fanoutMBps     float64
	populate       int
	compressTime   time.Duration
	compressRuns   int
	core           coreOptions
	relayRuns      int
	relayRequests  int
	relayAgainst   string
	scaleMiB       int
	convertGiB     float64
	wan            wanOptions
}

var allScenarios = []string{"rss", "catchup", "ingest"}

// extraScenarios run only when named: "all" keeps meaning the three above,
// so the default run stays as long as it was.
var extraScenarios = []string{"fanout-cpu", "fanout-fullsync", "fanout-rss", "compress", "compress-paired", "compress-core", "relay", "fanout-scale", "wan", "convert"}

func main() {
	runSinkIfAsked()
	runConvertIfAsked()
	var o options
	var scenarios string
	fs := flag.CommandLine
	fs.StringVar(&scenarios, "scenario", "all", "comma-separated: rss, catchup, ingest, fanout-cpu, fanout-fullsync, fanout-rss, compress, compress-paired, compress-core, relay, fanout-scale, wan, convert, or all (the first three)")
	fs.Float64Var(&o.gib, "gib", 2, "GiB written through the master (rss, catchup; fanout-cpu, where the default is 1)")
	fs.IntVar(&o.replicas, "replicas", 20, "replicas of the proxy (rss)")
	fs.IntVar(&o.valueBytes, "value", 256<<10, "SET value size in bytes (rss, catchup)")
	fs.IntVar(&o.keys, "keys", 64, "keys the SETs cycle over: Redis holds keys*value bytes")
	fs.IntVar(&o.segmentMiB, "segment-mib", 64, "backlog.segment_bytes in MiB")
	fs.DurationVar(&o.ingestSeconds, "ingest-time", 8*time.Second, "how long to write per fsync policy (ingest)")
	fs.IntVar(&o.ingestValue, "ingest-value", 16<<10, "SET value size in bytes (ingest)")
	fs.DurationVar(&o.interval, "interval", time.Second, "sampling interval")
	fs.BoolVar(&o.evict, "evict", true, "drop the backlog from the page cache before replicas catch up (rss, catchup)")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Minute, "give up waiting for a catch-up after this long")
	fs.BoolVar(&o.keep, "keep", false, "keep the temp dir (data, logs) instead of removing it")
	fs.StringVar(&o.tmp, "tmp", "", "parent of the temp dir (default: $TMPDIR); it holds the backlogs, gigabytes")
	fs.IntVar(&o.fanoutReplicas, "fanout-replicas", 20, "replicas (fanout-cpu, fanout-fullsync)")
	fs.IntVar(&o.fanoutRuns, "fanout-runs", 5, "runs of the side-by-side setups (fanout-cpu)")
	fs.IntVar(&o.wideReplicas, "wide-replicas", 50, "replicas of the proxy (fanout-rss)")
	fs.DurationVar(&o.fanoutTime, "fanout-time", 30*time.Second, "how long to write (fanout-rss)")
	fs.Float64Var(&o.fanoutMBps, "fanout-mbps", 10, "write rate in MB/s (fanout-rss)")
	fs.IntVar(&o.populate, "populate", 500000, "keys DEBUG POPULATE puts in the master (fanout-fullsync)")
	fs.DurationVar(&o.compressTime, "compress-time", 30*time.Second, "how long to write the mixed load (compress)")
	fs.IntVar(&o.compressRuns, "compress-runs", 3, "runs (compress-paired)")
	fs.Float64Var(&o.core.rateMBps, "core-rate", 300, "stream rate offered in MB/s (compress-core)")
	fs.DurationVar(&o.core.d, "core-time", 20*time.Second, "how long to write (compress-core)")
	fs.IntVar(&o.core.procs, "core-procs", 1, "GOMAXPROCS of the sending proxy (compress-core)")
	fs.StringVar(&o.core.codec, "core-codec", "s2", "codec between the proxies (compress-core)")
	fs.IntVar(&o.relayRuns, "relay-runs", 3, "side-by-side runs (relay)")
	fs.IntVar(&o.relayRequests, "relay-requests", 400000, "redis-benchmark -n (relay)")
	fs.StringVar(&o.relayAgainst, "relay-against", "", "another replproxy binary that relays the same stream beside P, to compare two builds in one run (relay)")
	fs.IntVar(&o.scaleMiB, "scale-mib", 128, "MiB written per replica count (fanout-scale)")
	fs.Float64Var(&o.convertGiB, "convert-gib", 1, "size of the Redis 7.4 RDB converted for Redis 7.2 (convert)")
	fs.Float64Var(&o.wan.rateMbit, "wan-rate", 80, "link rate in Mbit/s each way (wan)")
	fs.Float64Var(&o.wan.burstMBps, "wan-burst-mbps", 12, "burst write rate in MB/s of JSON-like SETs (wan)")
	fs.DurationVar(&o.wan.burstTime, "wan-burst-time", 40*time.Second, "burst length (wan)")
	fs.IntVar(&o.wan.replicas, "wan-replicas", 3, "replicas in region B (wan)")
	fs.IntVar(&o.wan.keys, "wan-keys", 100000, "keys DEBUG POPULATE puts in the master first (wan)")
	fs.StringVar(&o.wan.cobl, "wan-cobl", "replica 256mb 64mb 60", "the master's client-output-buffer-limit (wan)")
	fs.StringVar(&o.wan.topologies, "wan-topologies", "direct,far,chain-s2,chain-zstd", "comma-separated: direct, far, chain-none, chain-s2, chain-zstd, chain-auto (wan)")
	fs.DurationVar(&o.wan.settle, "wan-settle", 3*time.Minute, "how long to wait for the replicas to converge after the burst (wan)")
	fs.IntVar(&o.wan.flaps, "wan-flaps", 10, "link cuts on the chain after the table, 0 for none (wan)")
	fs.DurationVar(&o.wan.flapDown, "wan-flap-down", 5*time.Second, "how long each cut lasts, and the time between cuts (wan)")
	fs.IntVar(&o.wan.runs, "wan-runs", 1, "runs of every topology (wan)")
	fs.StringVar(&o.wan.out, "wan-out", "", "directory for wan-samples.csv and the plots (default: the temp dir; kept with -keep)")
	fs.StringVar(&o.wan.nsPrefix, "wan-ns-prefix", "rpwan", "prefix of the network namespaces' names (wan)")
	fs.DurationVar(&o.wan.sampleEvery, "wan-sample", 500*time.Millisecond, "sampling interval (wan)")
	fs.StringVar(&o.proxyBin, "replproxy", "", "replproxy binary to run (default: go build ./cmd/replproxy into the temp dir)")
	fs.Usage = func() {
		out := fs.Output()
		fmt.Fprintf(out, "usage: go run ./bench/scenario [flags]   (from the module root)\n\n")
		fmt.Fprintf(out, "Starts redis-server and replproxy processes on loopback and reports:\n")
		fmt.Fprintf(out, "  rss      proxy RSS while -gib GiB fill its backlog and -replicas stopped replicas then catch up\n")
		fmt.Fprintf(out, "  catchup  one replica catching up -gib GiB from the backlog (evicted, then warm page cache)\n")
		fmt.Fprintf(out, "  ingest   proxy ingest MB/s with pipelined SETs, once per fsync policy\n")
		fmt.Fprintf(out, "run only when named:\n")
		fmt.Fprintf(out, "  fanout-cpu       master CPU per GB above its floor: one direct replica, one proxy, -fanout-replicas behind a proxy (-fanout-runs)\n")
		fmt.Fprintf(out, "  fanout-fullsync  -fanout-replicas new replicas full-syncing from a proxy at once\n")
		fmt.Fprintf(out, "  fanout-rss       proxy RSS with -wide-replicas replicas streaming a moderate load\n")
		fmt.Fprintf(out, "  compress         zstd and s2 between two proxies vs. none, under a mixed write load, and the encoders alone\n")
		fmt.Fprintf(out, "  compress-paired  each codec's cost on the sending proxy, with a plain sender beside it on the same load (-compress-runs)\n")
		fmt.Fprintf(out, "  compress-core    whether one core of the sending proxy keeps up with -core-rate MB/s of stream under -core-codec\n")
		fmt.Fprintf(out, "  relay            relay CPU and added lag: a chained redis-server vs. the proxy, side by side\n")
		fmt.Fprintf(out, "  fanout-scale     proxy CPU per GB per replica with 1, 5, 20, 50 replicas, against a plain sendfile floor\n")
		fmt.Fprintf(out, "  convert          RSS of rdbconvert converting a -convert-gib GiB Redis 7.4 RDB for Redis 7.2 (needs make compat's builds)\n")
		fmt.Fprintf(out, "  wan              regions A and B in network namespaces over a tbf-shaped link (root): direct, far, chain per codec\n\nflags:\n")
		fs.PrintDefaults()
	}
	flag.Parse()
	fs.Visit(func(f *flag.Flag) { o.gibSet = o.gibSet || f.Name == "gib" })
	if scenarios == "all" {
		o.scenarios = allScenarios
	} else {
		for _, s := range strings.Split(scenarios, ",") {
			s = strings.TrimSpace(s)
			if !contains(allScenarios, s) && !contains(extraScenarios, s) {
				fmt.Fprintf(os.Stderr, "unknown scenario %q: want %s, %s or all\n", s,
					strings.Join(allScenarios, ", "), strings.Join(extraScenarios, ", "))
				os.Exit(2)
			}
			o.scenarios = append(o.scenarios, s)
		}
	}
	if o.gib <= 0 || o.replicas < 1 || o.valueBytes < 1 || o.keys < 1 || o.ingestValue < 1 || o.segmentMiB < 1 ||
		o.fanoutReplicas < 1 || o.wideReplicas < 1 || o.fanoutTime <= 0 || o.fanoutMBps <= 0 || o.populate < 1 || o.compressTime <= 0 ||
		o.compressRuns < 1 || o.core.rateMBps <= 0 || o.core.d <= 0 || o.core.procs < 1 ||
		o.relayRuns < 1 || o.fanoutRuns < 1 || o.relayRequests < 1 || o.scaleMiB < 1 || o.convertGiB <= 0 {
		fmt.Fprintln(os.Stderr, "sizes and counts must be positive")
		os.Exit(2)
	}
	if !o.wan.valid() {
		fmt.Fprintln(os.Stderr, "wan sizes, rates and counts must be positive")
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "scenario:", err)
		os.Exit(1)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func run(o options) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		// A second Ctrl-C kills at once; the children die with us (Pdeathsig).
		stop()
	}()

	root, err := os.MkdirTemp(o.tmp, "replproxy-bench-")
	if err != nil {
		return err
	}
	e := &env{Program: redisproc.NewProgram(ctx, root, os.Stderr), root: root, proxyBin: o.proxyBin}
	defer func() {
		e.Close()
		if o.keep {
			fmt.Printf("kept %s\n", root)
		} else {
			os.RemoveAll(root)
		}
	}()
	if e.redisBin, err = exec.LookPath("redis-server"); err != nil {
		return err
	}
	if e.proxyBin == "" {
		if e.proxyBin, err = buildProxy(ctx, root); err != nil {
			return err
		}
	}
	version, _ := exec.Command(e.redisBin, "--version").Output()
	fmt.Printf("machine: %d CPUs, %s; %s", runtime.NumCPU(), runtime.Version(), version)
	fmt.Printf("data in %s (loopback only; the machine may be running other work)\n", root)

	b := &bench{env: e, opt: o, out: os.Stdout}
	for _, s := range o.scenarios {
		var err error
		switch s {
		case "rss":
			err = b.rss(ctx)
		case "catchup":
			err = b.catchup(ctx)
		case "ingest":
			err = b.ingest(ctx)
		case "fanout-cpu":
			err = b.fanoutCPU(ctx)
		case "fanout-fullsync":
			err = b.fanoutFullsync(ctx)
		case "fanout-rss":
			err = b.fanoutRSS(ctx)
		case "compress":
			err = b.compress(ctx)
		case "compress-paired":
			err = b.compressPaired(ctx)
		case "compress-core":
			err = b.compressCore(ctx)
		case "relay":
			err = b.relay(ctx)
		case "fanout-scale":
			err = b.fanoutScale(ctx)
		case "wan":
			err = b.wan(ctx)
		case "convert":
			err = b.convert(ctx)
		}
		// Each scenario starts from nothing: stop its processes and free
		// its disk before the next one.
		e.Close()
		if !o.keep {
			e.removeDirs()
		}
		if err != nil {
			if ctx.Err() != nil {
				return errors.New("interrupted; everything started was stopped")
			}
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}

// buildProxy compiles the proxy from the module the current directory is in,
// so the figures are for the code checked out here.
func buildProxy(ctx context.Context, root string) (string, error) {
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	mod := strings.TrimSpace(string(gomod))
	if err != nil || mod == "" || mod == os.DevNull {
		return "", errors.New("run from inside the replproxy module, or pass -replproxy")
	}
	bin := filepath.Join(root, "replproxy")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/replproxy")
	cmd.Dir = filepath.Dir(mod)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build ./cmd/replproxy: %w", err)
	}
	return bin, nil
}

// removeDirs deletes the per-process dirs: the scenarios write gigabytes
// each, and the next one should not find the disk fuller.
func (e *env) removeDirs() {
	entries, _ := os.ReadDir(e.root)
	for _, d := range entries {
		if d.IsDir() {
			os.RemoveAll(filepath.Join(e.root, d.Name()))
		}
	}
}

type bench struct {
	env *env
	opt options
	out io.Writer
}

func (b *bench) writeBytes() int64 { return int64(b.opt.gib * (1 << 30)) }

func (b *bench) printf(format string, args ...any) { fmt.Fprintf(b.out, format, args...) }

func mib(n int64) float64 { return float64(n) / (1 << 20) }

func mbps(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / 1e6 / d.Seconds()
}
