// Package wan builds a thin link between two regions on one machine: two
// network namespaces joined by a veth pair whose two ends are shaped by
// tc tbf, with addresses in 198.18.0.0/15 (RFC 2544, for benchmarks) and
// nothing else routed. Tests and the wan scenario run servers inside with
// ip netns exec. It needs root, ip and the tbf qdisc.
package wan

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Addresses of region A's and region B's end of the link.
const (
	AddrA = "198.18.0.1"
	AddrB = "198.18.0.2"
)

// Link is the pair of regions and the shaped link between them.
type Link struct {
	NsA, NsB   string // namespace names
	DevA, DevB string // veth ends, in NsA and NsB
}

// ErrUnavailable says this machine cannot build a link: not root, or no
// ip, tc or tbf.
var ErrUnavailable = errors.New("wan link unavailable")

// Setup creates the namespaces (named prefix-<random>-a and -b), the veth
// pair, and shapes each end's egress to rateBits per second. A failure
// leaves nothing behind. prefix keeps names apart from anyone else's.
func Setup(ctx context.Context, prefix string, rateBits int64) (*Link, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: needs root for network namespaces and tc", ErrUnavailable)
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%w: %s not found", ErrUnavailable, tool)
		}
	}
	var rnd [3]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("name the namespaces: %w", err)
	}
	id := hex.EncodeToString(rnd[:])
	l := &Link{NsA: prefix + "-" + id + "-a", NsB: prefix + "-" + id + "-b",
		DevA: "wa" + id, DevB: "wb" + id} // interface names: 15 bytes at most
	if err := l.build(ctx, rateBits); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func (l *Link) build(ctx context.Context, rateBits int64) error {
	steps := [][]string{
		{"ip", "netns", "add", l.NsA},
		{"ip", "netns", "add", l.NsB},
		{"ip", "-n", l.NsA, "link", "set", "lo", "up"},
		{"ip", "-n", l.NsB, "link", "set", "lo", "up"},
		{"ip", "-n", l.NsA, "link", "add", l.DevA, "type", "veth", "peer", "name", l.DevB, "netns", l.NsB},
		{"ip", "-n", l.NsA, "addr", "add", AddrA + "/30", "dev", l.DevA},
		{"ip", "-n", l.NsB, "addr", "add", AddrB + "/30", "dev", l.DevB},
		{"ip", "-n", l.NsA, "link", "set", l.DevA, "up"},
		{"ip", "-n", l.NsB, "link", "set", l.DevB, "up"},
	}
	for _, s := range steps {
		if err := run(ctx, s...); err != nil {
			return err
		}
	}
	if err := l.Shape(ctx, rateBits); err != nil {
		if strings.Contains(err.Error(), "tbf") || strings.Contains(err.Error(), "No such file") {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		return err
	}
	return nil
}

// Shape sets both ends' egress to rateBits per second. The bucket holds a
// few milliseconds of the rate, and the queue 200 ms of it, as a router's
// would; more waits in the sender's socket buffer, where TCP sees it.
func (l *Link) Shape(ctx context.Context, rateBits int64) error {
	burst := max(rateBits/8/250, 16<<10) // 4 ms of the rate, at least 16 KiB
	for _, end := range [][2]string{{l.NsA, l.DevA}, {l.NsB, l.DevB}} {
		err := run(ctx, "tc", "-n", end[0], "qdisc", "replace", "dev", end[1], "root", "tbf",
			"rate", fmt.Sprintf("%dbit", rateBits), "burst", fmt.Sprint(burst), "latency", "200ms")
		if err != nil {
			return fmt.Errorf("shape %s with tbf: %w", end[1], err)
		}
	}
	return nil
}

// Close deletes both namespaces, and with them the veth pair. It is safe
// to call more than once and on a half-built link.
func (l *Link) Close() error {
	var errs []error
	for _, ns := range []string{l.NsA, l.NsB} {
		// A fresh context: cleanup must run after the caller's ended.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := run(ctx, "ip", "netns", "del", ns)
		cancel()
		if err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// In is the prefix that runs a command inside namespace ns.
func In(ns string) []string { return []string{"ip", "netns", "exec", ns} }

// SetUp takes the link up or down, from region A's end: a cut cable.
func (l *Link) SetUp(ctx context.Context, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	return run(ctx, "ip", "-n", l.NsA, "link", "set", l.DevA, state)
}

// TxBytes are the bytes region A's end has sent over the link so far:
// what crossed from A to B.
func (l *Link) TxBytes(ctx context.Context) (int64, error) {
	out, err := exec.CommandContext(ctx, "ip", "-n", l.NsA, "-j", "-s", "link", "show", "dev", l.DevA).Output()
	if err != nil {
		return 0, fmt.Errorf("read %s counters: %w", l.DevA, err)
	}
	var links []struct {
		Stats64 struct {
			TX struct {
				Bytes int64 `json:"bytes"`
			} `json:"tx"`
		} `json:"stats64"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		return 0, fmt.Errorf("read %s counters: %q: %v", l.DevA, out, err)
	}
	return links[0].Stats64.TX.Bytes, nil
}

func run(ctx context.Context, argv ...string) error {
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
