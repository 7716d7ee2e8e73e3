package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	startTimeout = 30 * time.Second
	stopTimeout  = 10 * time.Second
)

// env owns every process a scenario starts, so that one cleanup, also on
// Ctrl-C, leaves nothing running.
type env struct {
	root     string // temp dir: one subdir per process
	proxyBin string
	redisBin string

	mu    sync.Mutex
	procs []*child
}

// child is one redis-server or replproxy process on a loopback port.
type child struct {
	name    string
	dir     string
	port    int
	bin     string
	argv    func(port int) []string
	isProxy bool
	// In a network namespace (wan scenario): prefix runs the command there,
	// host is the address it listens on, and the scenario reaches a Redis
	// through its unix socket sock and a proxy with redis-cli in the
	// namespace.
	prefix []string
	host   string
	sock   string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	admin  *respConn
}

func (c *child) addr() string { return net.JoinHostPort(c.addrHost(), strconv.Itoa(c.port)) }

func (c *child) addrHost() string {
	if c.host == "" {
		return "127.0.0.1"
	}
	return c.host
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startRedis runs redis-server without persistence (the scenarios measure
// the proxy, not Redis' disk) and with extra arguments last, so they win.
func (e *env) startRedis(ctx context.Context, name string, extra ...string) (*child, error) {
	return e.startRedisAt(ctx, name, nil, "", extra...)
}

// startRedisAt is startRedis behind prefix, listening on host and on a
// unix socket, the scenario's way in across network namespaces. Protected
// mode is off there: the namespace holds only the scenario's processes.
func (e *env) startRedisAt(ctx context.Context, name string, prefix []string, host string, extra ...string) (*child, error) {
	dir := filepath.Join(e.root, name)
	c := &child{name: name, dir: dir, bin: e.redisBin, prefix: prefix, host: host}
	if len(prefix) > 0 {
		c.sock = filepath.Join(dir, "redis.sock")
		extra = append([]string{"--unixsocket", c.sock, "--unixsocketperm", "700", "--protected-mode", "no", "--enable-debug-command", "yes"}, extra...)
	}
	c.argv = func(port int) []string {
		return append([]string{
			"--port", strconv.Itoa(port), "--bind", c.addrHost(), "--dir", dir,
			"--save", "", "--appendonly", "no", "--daemonize", "no",
			"--repl-diskless-sync-delay", "0",
			"--logfile", filepath.Join(dir, "redis.log"),
		}, extra...)
	}
	return c, e.start(ctx, c)
}

// startProxy runs the replproxy binary with a config file for the settings
// that have no flag; the listen port is a flag so a retry can change it.
func (e *env) startProxy(ctx context.Context, name, config string) (*child, error) {
	return e.startProxyAt(ctx, name, config, nil, "")
}

// startProxyAt is startProxy run behind prefix, listening on host.
func (e *env) startProxyAt(ctx context.Context, name, config string, prefix []string, host string) (*child, error) {
	dir := filepath.Join(e.root, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		return nil, err
	}
	c := &child{name: name, dir: dir, bin: e.proxyBin, isProxy: true, prefix: prefix, host: host}
	c.argv = func(port int) []string {
		return []string{"run", "--config", cfgPath, "--listen", c.addr(),
			"--data-dir", filepath.Join(dir, "data"), "--log-format", "json"}
	}
	return c, e.start(ctx, c)
}

func (e *env) start(ctx context.Context, c *child) error {
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return err
	}
	e.mu.Lock()
	e.procs = append(e.procs, c)
	e.mu.Unlock()
	// A free port can be taken between our probe and the child's bind; a
	// new port is the cure, so an early exit is retried a few times.
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if c.port, err = freePort(); err != nil {
			return err
		}
		if err = c.launch(ctx); err == nil || ctx.Err() != nil {
			return err
		}
	}
	return err
}

// launch starts the process and waits until it answers PING.
func (c *child) launch(ctx context.Context) error {
	out, err := os.OpenFile(filepath.Join(c.dir, "stdout-stderr.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	argv := append(slices.Clone(c.prefix), append([]string{c.bin}, c.argv(c.port)...)...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = c.dir
	cmd.Stdout, cmd.Stderr = out, out
	// Pdeathsig: if this program dies without cleaning up (kill -9), the
	// kernel kills the children. Setpgid: a Ctrl-C reaches only this
	// program, which then stops the children in an order that works.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", c.name, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	c.mu.Lock()
	c.cmd, c.exited = cmd, exited
	if c.admin != nil {
		c.admin.Close()
		c.admin = nil
	}
	c.mu.Unlock()

	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-exited:
			return fmt.Errorf("%s exited at start; see %s", c.name, c.dir)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if r, err := c.do("PING"); err == nil && r == "PONG" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no PONG within %s; see %s", c.name, startTimeout, c.dir)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// restart brings a killed process back on the same port and directory.
func (c *child) restart(ctx context.Context) error {
	if c.alive() {
		return fmt.Errorf("restart %s: still running", c.name)
	}
	return c.launch(ctx)
}

func (c *child) alive() bool {
	c.mu.Lock()
	exited := c.exited
	c.mu.Unlock()
	if exited == nil {
		return false
	}
	select {
	case <-exited:
		return false
	default:
		return true
	}
}

func (c *child) pid() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil || c.cmd.Process == nil {
		return 0
	}
	return c.cmd.Process.Pid
}

func (c *child) signal(sig syscall.Signal) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd != nil && c.cmd.Process != nil {
		c.cmd.Process.Signal(sig) // fails only when it is gone already
	}
}

func (c *child) pause()  { c.signal(syscall.SIGSTOP) }
func (c *child) resume() { c.signal(syscall.SIGCONT) }

// stop ends the process: the proxy gets SIGTERM so that its final fsync and
// shutdown are part of its normal life; Redis holds nothing worth keeping.
func (c *child) stop() {
	if !c.alive() {
		return
	}
	c.resume() // a stopped process would not act on SIGTERM
	sig := syscall.SIGKILL
	if c.isProxy {
		sig = syscall.SIGTERM
	}
	c.signal(sig)
	c.mu.Lock()
	exited := c.exited
	c.mu.Unlock()
	select {
	case <-exited:
	case <-time.After(stopTimeout):
		c.signal(syscall.SIGKILL)
		<-exited
	}
	c.mu.Lock()
	if c.admin != nil {
		c.admin.Close()
		c.admin = nil
	}
	c.mu.Unlock()
}

// do runs one command on a connection kept per process and redialled after
// an error, so polling costs no connection setup each time.
func (c *child) do(args ...string) (any, error) {
	if c.sock == "" && len(c.prefix) > 0 {
		return c.cliDo(args...)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.admin == nil {
		network, addr := "tcp", c.addr()
		if c.sock != "" {
			network, addr = "unix", c.sock
		}
		rc, err := dialRESP(network, addr)
		if err != nil {
			return nil, err
		}
		c.admin = rc
	}
	r, err := c.admin.do(args...)
	var re replyError
	if err != nil && !errors.As(err, &re) {
		c.admin.Close()
		c.admin = nil
	}
	return r, err
}

// cliDo runs one command with redis-cli inside the child's namespace and
// returns its output as one string: enough for PING and INFO.
func (c *child) cliDo(args ...string) (any, error) {
	host, port, _ := net.SplitHostPort(c.addr())
	argv := append(slices.Clone(c.prefix), append([]string{"redis-cli", "-h", host, "-p", port}, args...)...)
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).Output()
	text := strings.TrimSpace(string(out))
	if err != nil {
		return nil, fmt.Errorf("%s: redis-cli: %w", c.name, err)
	}
	if strings.HasPrefix(text, "ERR") || strings.HasPrefix(text, "Could not connect") {
		return nil, fmt.Errorf("%s: %s", c.name, text)
	}
	return strings.ReplaceAll(strings.ReplaceAll(text, "\r\n", "\n"), "\n", "\r\n"), nil
}

func (c *child) info(section string) (map[string]string, error) {
	r, err := c.do("INFO", section)
	if err != nil {
		return nil, err
	}
	text, ok := r.(string)
	if !ok {
		return nil, fmt.Errorf("%s: INFO answered %T", c.name, r)
	}
	m := map[string]string{}
	for _, l := range strings.Split(text, "\r\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && !strings.HasPrefix(l, "#") {
			m[k] = v
		}
	}
	return m, nil
}

// cleanup stops everything, replicas first, so no process spends its last
// moments reconnecting to one already gone.
func (e *env) cleanup() {
	e.mu.Lock()
	procs := e.procs
	e.procs = nil
	e.mu.Unlock()
	var wg sync.WaitGroup
	for i := len(procs) - 1; i >= 0; i-- {
		wg.Add(1)
		go func(c *child) {
			defer wg.Done()
			c.stop()
		}(procs[i])
	}
	wg.Wait()
}

// memStats is a process's memory from /proc/<pid>/status, in bytes.
type memStats struct {
	RSS, Peak, Anon, File int64
}

func readMem(pid int) (memStats, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memStats{}, err
	}
	var m memStats
	fields := map[string]*int64{"VmRSS": &m.RSS, "VmHWM": &m.Peak, "RssAnon": &m.Anon, "RssFile": &m.File}
	for _, l := range strings.Split(string(raw), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if dst := fields[k]; ok && dst != nil {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			*dst = kb << 10
		}
	}
	return m, nil
}

// clockTick is USER_HZ, which is 100 on every Linux this runs on; Go has no
// sysconf to ask.
const clockTick = 10 * time.Millisecond

// readCPU returns the user plus system time a process has used.
func readCPU(pid int) (time.Duration, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces and parentheses; fields resume
	// after the last ')'. utime and stime are fields 14 and 15.
	rest := string(raw[strings.LastIndexByte(string(raw), ')')+1:])
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * clockTick, nil
}
