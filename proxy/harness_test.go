package proxy_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"gopkg.in/yaml.v3"

	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/proxy"
)

// binary is the replproxy executable for tests that kill the process.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "replproxy-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "replproxy")
	build := exec.Command("go", "build", "-o", binary, "../cmd/replproxy")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build replproxy:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// testProxy is a replproxy under test: in-process, or a child process when
// the test must kill it with SIGKILL.
type testProxy struct {
	t       testing.TB
	cfg     proxy.Config
	port    int
	logPath string

	cancel context.CancelFunc
	done   chan error
	cmd    *exec.Cmd
}

func proxyConfig(t testing.TB, master string) proxy.Config {
	cfg := proxy.Defaults()
	cfg.Listen = "127.0.0.1:" + strconv.Itoa(redisproc.FreePort(t))
	cfg.Master.Addr = master
	cfg.DataDir = filepath.Join(t.TempDir(), "data")
	cfg.Backlog.SegmentBytes = 1 << 20
	cfg.Backlog.MaxBytes = 256 << 20
	// Refreshes fork the master and count in its sync_full; tests that
	// want one ask for it.
	cfg.Snapshot.RefreshAfter = 1 << 40
	return cfg
}

func startProxy(t testing.TB, cfg proxy.Config) *testProxy {
	t.Helper()
	// The log lives apart from the data dir, which a test may fill up.
	tp := &testProxy{t: t, cfg: cfg, logPath: filepath.Join(t.TempDir(), "proxy.log")}
	_, port, _ := net.SplitHostPort(cfg.Listen)
	tp.port, _ = strconv.Atoi(port)
	tp.start()
	t.Cleanup(func() {
		tp.stop()
		if t.Failed() {
			t.Logf("proxy %d log tail:\n%s", tp.port, tail(tp.logPath, 80))
		}
	})
	return tp
}

func (tp *testProxy) start() {
	tp.t.Helper()
	f, err := os.OpenFile(tp.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		tp.t.Fatal(err)
	}
	level, err := zerolog.ParseLevel(tp.cfg.Log.Level)
	if err != nil || tp.cfg.Log.Level == "" {
		level = zerolog.InfoLevel
	}
	r, err := tp.cfg.Resolve()
	if err != nil {
		tp.t.Fatal(err)
	}
	p, err := proxy.New(r, zerolog.New(f).Level(level).With().Timestamp().Logger(), "test")
	if err != nil {
		tp.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tp.cancel, tp.done = cancel, make(chan error, 1)
	go func() {
		tp.done <- p.Run(ctx)
		f.Close()
	}()
}

// startProcess runs the proxy as a child process, for kill -9.
func (tp *testProxy) startProcess() {
	tp.t.Helper()
	f, err := os.OpenFile(tp.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		tp.t.Fatal(err)
	}
	// The child gets the test's whole configuration, as an operator's file.
	raw, err := yaml.Marshal(tp.cfg)
	if err != nil {
		tp.t.Fatal(err)
	}
	confPath := tp.logPath + ".yaml"
	if err := os.WriteFile(confPath, raw, 0o644); err != nil {
		tp.t.Fatal(err)
	}
	tp.cmd = exec.Command(binary, "run", "--config", confPath, "--log-format", "json")
	tp.cmd.Stdout, tp.cmd.Stderr = f, f
	if err := tp.cmd.Start(); err != nil {
		tp.t.Fatal(err)
	}
	f.Close()
	redisproc.Eventually(tp.t, 10*time.Second, "proxy process listening", func() (bool, string) {
		c, err := net.Dial("tcp", tp.cfg.Listen)
		if err != nil {
			return false, err.Error()
		}
		c.Close()
		return true, ""
	})
}

func (tp *testProxy) kill9() {
	tp.cmd.Process.Signal(syscall.SIGKILL)
	tp.cmd.Wait()
	tp.cmd = nil
}

func (tp *testProxy) stop() {
	if tp.cmd != nil {
		tp.cmd.Process.Signal(syscall.SIGTERM)
		tp.cmd.Wait()
		tp.cmd = nil
	}
	if tp.cancel != nil {
		tp.cancel()
		if err := <-tp.done; err != nil {
			tp.t.Errorf("proxy stopped with error: %v", err)
		}
		tp.cancel = nil
	}
}

// info reads an INFO section of the proxy over the wire, as an operator would.
func (tp *testProxy) info(section string) map[string]string {
	c, err := tp.dial()
	if err != nil {
		return map[string]string{}
	}
	defer c.Close()
	if auth := tp.adminAuth(); auth != nil {
		if _, err := roundTrip(c, auth...); err != nil {
			return map[string]string{}
		}
	}
	reply, err := roundTrip(c, "INFO", section)
	if err != nil {
		return map[string]string{}
	}
	out := map[string]string{}
	for _, line := range strings.Split(reply, "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = v
		}
	}
	return out
}

// adminAuth is the AUTH command of an admin, or nil when none is needed.
func (tp *testProxy) adminAuth() []string {
	if tp.cfg.RequirePass != "" {
		return []string{"AUTH", tp.cfg.RequirePass}
	}
	for _, u := range tp.cfg.Users {
		if u.Role == "admin" {
			return []string{"AUTH", u.Name, u.Password}
		}
	}
	return nil
}

// dial reaches the proxy's port, with the proxy's own certificate when it
// listens with TLS.
func (tp *testProxy) dial() (net.Conn, error) {
	if !tp.cfg.TLS.Listen {
		return net.DialTimeout("tcp", tp.cfg.Listen, time.Second)
	}
	cert, err := tls.LoadX509KeyPair(tp.cfg.TLS.Cert, tp.cfg.TLS.Key)
	if err != nil {
		return nil, err
	}
	pem, err := os.ReadFile(tp.cfg.TLS.CA)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	d := &net.Dialer{Timeout: time.Second}
	return tls.DialWithDialer(d, "tcp", tp.cfg.Listen, &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool})
}

func (tp *testProxy) infoInt(section, field string) int64 {
	v, err := strconv.ParseInt(tp.info(section)[field], 10, 64)
	if err != nil {
		return -1
	}
	return v
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
