package wan

import (
	"context"
	"errors"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// The link comes up shaped, counts what crosses it, and leaves no
// namespace behind.
func TestLinkBuildsAndGoes(t *testing.T) {
	ctx := context.Background()
	l := setup(t, "i25")
	before, err := l.TxBytes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal(err)
	}
	srv := redisproc.StartAt(t, redisproc.Binary{Path: bin}, redisproc.Place{Prefix: In(l.NsB), Host: AddrB})
	cli := append(In(l.NsA), "redis-cli", "-h", AddrB, "-p", strconv.Itoa(srv.Port), "SET", "k", strings.Repeat("x", 100_000))
	out, err := exec.Command(cli[0], cli[1:]...).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "OK" {
		t.Fatalf("GET across the link: %v: %d bytes: %.300s", err, len(out), out)
	}
	after, err := l.TxBytes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := srv.Do("STRLEN", "k"); err != nil || got != int64(100_000) {
		t.Fatalf("STRLEN k across the link: %v, %v", got, err)
	}
	if after-before < 100_000 {
		t.Fatalf("tx bytes %d then %d", before, after)
	}
	qd, _ := exec.Command("tc", "-n", l.NsB, "qdisc", "show", "dev", l.DevB).CombinedOutput()
	if !strings.Contains(string(qd), "tbf") {
		t.Fatalf("no tbf on %s: %s", l.DevB, qd)
	}
	srv.Kill()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	ns, _ := exec.Command("ip", "netns", "list").CombinedOutput()
	if strings.Contains(string(ns), l.NsA) || strings.Contains(string(ns), l.NsB) {
		t.Fatalf("namespaces left behind: %s", ns)
	}
}

// Dialer reaches a server that listens only inside a namespace, with no
// unix socket, as the wan scenario reaches its proxies.
func TestDialerReachesIntoTheNamespace(t *testing.T) {
	l := setup(t, "rbench")
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal(err)
	}
	srv := redisproc.StartCommand(t, redisproc.Command{Path: bin, Args: func(addr string) []string {
		_, port, _ := strings.Cut(addr, ":")
		return []string{"--port", port, "--bind", AddrB, "--save", "", "--protected-mode", "no"}
	}}, redisproc.Place{Prefix: In(l.NsB), Host: AddrB, Dial: Dialer(l.NsB)})
	if got, err := srv.Do("SET", "k", "v"); err != nil || got != "OK" {
		t.Fatalf("SET through the dialer: %v, %v", got, err)
	}
	if srv.Socket() != "" {
		t.Fatalf("a Command has no unix socket, got %s", srv.Socket())
	}
	srv.Kill()
}

// setup builds a link, or skips the test where the machine cannot; the
// namespaces go when the test ends.
func setup(t *testing.T, prefix string) *Link {
	t.Helper()
	l, err := Setup(context.Background(), prefix, 8_000_000)
	if errors.Is(err, ErrUnavailable) {
		t.Skipf("skipped: %v (run as root with ip, tc and the tbf qdisc)", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}
