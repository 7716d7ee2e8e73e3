// Package redisproc runs real redis-server processes (and other RESP
// servers, such as replproxy) for end-to-end tests and for programs such
// as the bench scenarios (see Program), with polling helpers to wait on
// replication and a load generator that writes every data type, so tests
// can compare a master and its replicas.
package redisproc

import (
	"cmp"
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

	"github.com/redis/go-redis/v9"
)

const (
	loopback = "127.0.0.1"

	// startTimeout bounds how long a starting server may take to answer PING;
	// loading a large RDB under -race on a busy CI machine is the slow case.
	startTimeout = 20 * time.Second
	// stopTimeout covers SHUTDOWN on a master, which in Redis 7 first waits
	// up to shutdown-timeout (10 s) for lagging replicas to catch up.
	stopTimeout = 20 * time.Second

	logLinesOnFailure = 30
	logName           = "redis.log"
	// outName collects stdout/stderr: redis-server reports bad arguments there
	// before it opens its log file.
	outName = "redis.out"
)

// errExitedEarly marks a redis-server that died before it answered PING.
var errExitedEarly = errors.New("redis-server exited before answering PING")

// Server is one redis-server process (or another RESP server, see
// Command) on a free loopback port in its own temp dir. It survives
// Kill/Shutdown so that Restart can bring it back with the same port, dir
// and arguments.
type Server struct {
	Host string
	Port int
	Dir  string

	tb      TB // owner: its cleanup kills the process and prints logs
	bin     Binary
	extra   []string                   // caller's arguments, appended after the defaults
	command func(addr string) []string // all the arguments of a Command
	place   Place

	mu      sync.Mutex
	proc    *process
	admin   *redis.Client // used by Do/Info/Digest; renewed on every launch
	clients []*redis.Client
}

// process is one incarnation of a Server.
type process struct {
	cmd     *exec.Cmd
	exited  chan struct{} // closed once cmd.Wait has returned
	waitErr error         // valid after exited is closed
}

// Start launches redis-server with test-friendly defaults plus args (later
// arguments override earlier ones), waits until it answers PING, and
// registers a cleanup that kills it.
func Start(t TB, args ...string) *Server {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redisproc: %v", err)
	}
	return StartBinary(t, Binary{Path: path}, args...)
}

// StartBinary is Start with a given server build, such as one from Built.
func StartBinary(t TB, bin Binary, args ...string) *Server {
	t.Helper()
	return start(t, &Server{Host: loopback, bin: bin, extra: slices.Clone(args)})
}

// Place runs a server elsewhere than on loopback: Prefix goes before the
// command (e.g. ip netns exec NAME, for a network namespace), and the server
// binds Host. The harness reaches a redis-server there through a unix
// socket in its dir, which crosses network namespaces, and a Command
// through Dial.
type Place struct {
	Prefix []string
	Host   string
	Dial   func(ctx context.Context, network, addr string) (net.Conn, error)
}

// StartAt is StartBinary in place p.
func StartAt(t TB, bin Binary, p Place, args ...string) *Server {
	t.Helper()
	return start(t, &Server{Host: p.Host, bin: bin, extra: slices.Clone(args), place: p})
}

// Command is a server other than redis-server that answers PING on its
// port, such as replproxy. Args returns all its arguments for the address
// it must listen on; it runs in its Server's dir, so relative paths in
// them land there.
type Command struct {
	Path string
	Args func(addr string) []string
}

// StartCommand runs c in place p (the zero Place is loopback) and waits
// until it answers PING. Its output goes to redis.out in its dir.
func StartCommand(t TB, c Command, p Place) *Server {
	t.Helper()
	host := cmp.Or(p.Host, loopback)
	return start(t, &Server{Host: host, bin: Binary{Path: c.Path, NoDebugFlag: true}, command: c.Args, place: p})
}

func start(t TB, s *Server) *Server {
	t.Helper()
	s.Dir, s.tb = t.TempDir(), t
	t.Cleanup(s.cleanup)
	// FreePort closes its listener before the server binds, so another
	// process can grab the port in between; a fresh port is the cure.
	const attempts = 3
	for i := 1; ; i++ {
		s.Port = FreePort(t)
		err := s.launch()
		if err == nil {
			return s
		}
		if i < attempts && errors.Is(err, errExitedEarly) && strings.Contains(s.diagnostics(5), "in use") {
			continue
		}
		// The cleanup prints the logs of the failed start.
		t.Fatalf("redisproc: start %s: %v", s.Addr(), err)
	}
}

// Socket is the unix socket of a redis-server that runs in a Place, or
// empty.
func (s *Server) Socket() string {
	if len(s.place.Prefix) == 0 || s.command != nil {
		return ""
	}
	return filepath.Join(s.Dir, "redis.sock")
}

// target is where the harness reaches the server: the unix socket if it
// has one.
func (s *Server) target() (network, addr string) {
	if sock := s.Socket(); sock != "" {
		return "unix", sock
	}
	return "tcp", s.Addr()
}

// viaSocket points a client at the server's unix socket, if it has one,
// or through its Place's dialer.
func (s *Server) viaSocket(o *redis.Options) {
	o.Network, o.Addr = s.target()
	if s.Socket() == "" && s.place.Dial != nil {
		o.Dialer = s.place.Dial
	}
}

// raw sends one command on a fresh connection; see rawCommand.
func (s *Server) raw(timeout time.Duration, args ...string) (string, error) {
	var dial func(ctx context.Context, network, addr string) (net.Conn, error)
	if s.Socket() == "" {
		dial = s.place.Dial
	}
	network, addr := s.target()
	return rawCommand(dial, network, addr, timeout, args...)
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t TB) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(loopback, "0"))
	if err != nil {
		t.Fatalf("redisproc: find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Addr returns "host:port" for clients.
func (s *Server) Addr() string {
	return net.JoinHostPort(s.Host, strconv.Itoa(s.Port))
}

// argv is recomputed per launch because Start may change the port.
func (s *Server) argv() []string {
	if s.command != nil {
		return s.command(s.Addr())
	}
	base := []string{
		"--port", strconv.Itoa(s.Port),
		"--bind", s.Host,
		"--dir", s.Dir,
		"--save", "",
		"--appendonly", "no",
		"--repl-diskless-sync-delay", "0",
		"--logfile", filepath.Join(s.Dir, logName),
		"--daemonize", "no",
	}
	if !s.bin.NoDebugFlag {
		base = append(base, "--enable-debug-command", "yes")
	}
	if sock := s.Socket(); sock != "" {
		// Its namespace holds only the test's processes, which reach it
		// on Host, not on loopback.
		base = append(base, "--unixsocket", sock, "--unixsocketperm", "700", "--protected-mode", "no")
	}
	return append(base, s.extra...)
}

// launch starts a new incarnation and waits until it serves commands.
func (s *Server) launch() error {
	out, err := os.OpenFile(filepath.Join(s.Dir, outName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open output file: %w", err)
	}
	// The child keeps its own descriptor; ours is not needed after Start.
	defer out.Close()

	argv := append(slices.Clone(s.place.Prefix), append([]string{s.bin.Path}, s.argv()...)...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = s.Dir
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("exec %s: %w", s.bin.Path, err)
	}
	p := &process{cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()

	s.mu.Lock()
	s.proc = p
	old := s.admin
	// A fresh admin client: the old one may have tripped go-redis's dial
	// circuit breaker while the server was down, delaying reconnects by ~1 s.
	s.admin = newClient(s.Addr(), 0, adminOptions, s.viaSocket)
	s.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	return s.waitReady(p)
}

// waitReady polls with a raw PING so that no client pool state is involved;
// a server still loading its RDB answers -LOADING and is not ready.
func (s *Server) waitReady(p *process) error {
	deadline := time.Now().Add(startTimeout)
	var last string
	for time.Now().Before(deadline) {
		if !p.alive() {
			return fmt.Errorf("%w: %v", errExitedEarly, p.waitErr)
		}
		select {
		case <-interrupted(s.tb):
			return errors.New("interrupted")
		default:
		}
		reply, err := s.raw(time.Second, "PING")
		if err == nil && reply == "+PONG" {
			return nil
		}
		last = reply
		if err != nil {
			last = err.Error()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("no PONG within %s (last: %s)", startTimeout, last)
}

func (p *process) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// wait reports whether the process exited within timeout.
func (p *process) wait(timeout time.Duration) bool {
	select {
	case <-p.exited:
		return true
	case <-time.After(timeout):
		return false
	}
}

func (p *process) signal(sig os.Signal) {
	// The only failure is "process already finished", which is fine here.
	_ = p.cmd.Process.Signal(sig)
}

// current returns the running incarnation, or nil before the first launch.
func (s *Server) current() *process {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc
}

// Running says whether the current incarnation has not exited.
func (s *Server) Running() bool {
	p := s.current()
	return p != nil && p.alive()
}

// PID returns the process id of the current incarnation (0 if none).
func (s *Server) PID() int {
	if p := s.current(); p != nil {
		return p.cmd.Process.Pid
	}
	return 0
}

// Shutdown sends SHUTDOWN SAVE or NOSAVE and waits for the process to exit.
// A replica shut down with save=true stores its replication ID and offset in
// its RDB, so after Restart it can resume with a partial resync.
func (s *Server) Shutdown(save bool) error {
	p := s.current()
	if p == nil || !p.alive() {
		return fmt.Errorf("shutdown %s: not running", s.Addr())
	}
	mode := "NOSAVE"
	if save {
		mode = "SAVE"
	}
	// A raw connection, because a successful SHUTDOWN never replies: the
	// server just closes the socket, which go-redis would treat as a
	// network error worth retrying.
	reply, err := s.raw(stopTimeout, "SHUTDOWN", mode)
	if strings.HasPrefix(reply, "-") {
		// Refused (e.g. the RDB could not be written): it keeps running.
		return fmt.Errorf("shutdown %s %s: %s", s.Addr(), mode, reply)
	}
	if p.wait(stopTimeout) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("shutdown %s %s: %w", s.Addr(), mode, err)
	}
	return fmt.Errorf("shutdown %s %s: still running after %s (reply %q)", s.Addr(), mode, stopTimeout, reply)
}

// Kill sends SIGKILL and waits for the process to exit.
func (s *Server) Kill() {
	p := s.current()
	if p == nil {
		return
	}
	p.signal(syscall.SIGKILL)
	p.wait(stopTimeout)
}

// Restart starts the server again with the same port, dir and arguments,
// after Kill or Shutdown, and waits for it to answer PING.
func (s *Server) Restart(t TB) {
	t.Helper()
	if p := s.current(); p != nil && p.alive() {
		t.Fatalf("redisproc: restart %s: still running as pid %d", s.Addr(), p.cmd.Process.Pid)
	}
	if err := s.launch(); err != nil {
		t.Fatalf("redisproc: restart %s: %v", s.Addr(), err) // logs follow from the cleanup
	}
}

// Pause freezes the process with SIGSTOP: it keeps its sockets open but
// answers nothing, like a server stuck in a long command or a network stall.
func (s *Server) Pause() {
	if p := s.current(); p != nil {
		p.signal(syscall.SIGSTOP)
	}
}

// Resume continues a paused process.
func (s *Server) Resume() {
	if p := s.current(); p != nil {
		p.signal(syscall.SIGCONT)
	}
}

// LogTail returns the last n lines of the server's log file.
func (s *Server) LogTail(n int) string {
	return tailFile(filepath.Join(s.Dir, logName), n)
}

// diagnostics is what a failing test needs to see: the log, and stdout or
// stderr if redis-server wrote anything there.
func (s *Server) diagnostics(n int) string {
	msg := "--- " + logName + " ---\n" + s.LogTail(n)
	if out := tailFile(filepath.Join(s.Dir, outName), n); strings.TrimSpace(out) != "" {
		msg += "\n--- " + outName + " ---\n" + out
	}
	return msg
}

func (s *Server) cleanup() {
	s.Resume() // a stopped process would not notice the client closes
	s.closeClients()
	s.Kill()
	if s.tb.Failed() {
		s.tb.Logf("redisproc: %s (dir %s):\n%s", s.Addr(), s.Dir, s.diagnostics(logLinesOnFailure))
	}
}

func tailFile(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", filepath.Base(path), err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
