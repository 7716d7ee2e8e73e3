package restore

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/replproxy/replproxy/resp"
)

// tempServer is a redis-server of our own: no TCP port, a unix socket
// readable only by us, no persistence but the SAVE we ask for, into
// resultRDB. It starts empty, and gets its data as a replica of a feed.
type tempServer struct {
	dir     string
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the process is gone
	waitErr error
	output  *bytes.Buffer // stdout and stderr, read only after exited
	conn    net.Conn
	br      *bufio.Reader
	bw      *bufio.Writer
}

const resultRDB = "result.rdb"

func startTempServer(ctx context.Context, bin, dir string) (*tempServer, error) {
	sock := filepath.Join(dir, "redis.sock")
	args := []string{
		"--port", "0",
		"--unixsocket", sock,
		"--unixsocketperm", "700",
		"--dir", dir,
		"--dbfilename", resultRDB,
		"--save", "",
		"--appendonly", "no",
		"--logfile", filepath.Join(dir, "redis.log"),
		"--daemonize", "no",
	}
	if major, err := serverMajor(bin); err != nil {
		return nil, err
	} else if major >= 7 {
		// Redis 7 turned DEBUG off by default; before, it is always on.
		args = append(args, "--enable-debug-command", "local")
	}
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = sysProcAttr()
	// A bad option is reported on stdout before the log file is opened.
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	s := &tempServer{dir: dir, cmd: cmd, exited: make(chan struct{}), output: &out}
	go func() {
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()
	if err := s.connect(ctx, sock); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

// connect waits until the server has loaded its RDB and answers PING.
func (s *tempServer) connect(ctx context.Context, sock string) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.exited:
			return fmt.Errorf("temporary redis-server exited (%v): %s%s", s.waitErr, strings.TrimSpace(s.output.String()), s.logTail())
		case <-tick.C:
		}
		if s.conn == nil {
			c, err := net.Dial("unix", sock)
			if err != nil {
				continue
			}
			s.conn, s.br, s.bw = c, bufio.NewReaderSize(c, 64<<10), bufio.NewWriterSize(c, 256<<10)
		}
		_, err := s.do("PING")
		if err == nil {
			return nil
		}
		var re replyError
		if !errors.As(err, &re) || !strings.HasPrefix(string(re), "LOADING") {
			return fmt.Errorf("temporary redis-server: %w", err)
		}
	}
}

func (s *tempServer) logTail() string {
	b, err := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return "\nits log:\n" + strings.Join(lines, "\n")
}

// do sends one command and reads its reply.
func (s *tempServer) do(args ...string) (string, error) {
	s.bw.Write(resp.AppendCommand(nil, args...))
	if err := s.bw.Flush(); err != nil {
		return "", fmt.Errorf("send %s: %w", args[0], err)
	}
	return readReply(s.br)
}

// errorReplies is how many commands the server has refused so far, those
// of its master included (0 where INFO has no total_error_replies, before
// Redis 6.2).
func (s *tempServer) errorReplies() (int64, error) {
	info, err := s.do("INFO", "stats")
	if err != nil {
		return 0, fmt.Errorf("temporary server: INFO stats: %w", err)
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "total_error_replies:"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, nil
}

// appliedOffset is the replication offset the server has applied, as a
// replica: ok only once its link is up, after the snapshot is loaded, as
// INFO shows a placeholder offset before.
func (s *tempServer) appliedOffset() (int64, bool) {
	info, err := s.do("INFO", "replication")
	if err != nil {
		return 0, false
	}
	fields := map[string]string{}
	for _, line := range strings.Split(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			fields[k] = v
		}
	}
	if fields["master_link_status"] != "up" || fields["master_sync_in_progress"] != "0" {
		return 0, false
	}
	off, err := strconv.ParseInt(fields["slave_repl_offset"], 10, 64)
	return off, err == nil
}

// stop shuts the server down without saving and waits for it.
func (s *tempServer) stop() {
	asked := false
	if s.conn != nil {
		s.bw.Write(resp.AppendCommand(nil, "SHUTDOWN", "NOSAVE"))
		asked = s.bw.Flush() == nil
		s.conn.Close()
	}
	if !asked {
		// Not connected yet (interrupted while it started): SIGTERM shuts
		// it down too, and it has nothing to save.
		s.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
}

// replyError is an error reply from the server.
type replyError string

func (e replyError) Error() string { return string(e) }

// readReply reads one RESP2 reply. An error reply is returned as a
// replyError; arrays are read whole and summarized, as only their first
// error matters here.
func readReply(br *bufio.Reader) (string, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read reply: %w", err)
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", errors.New("read reply: empty line")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "", replyError(line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return "", fmt.Errorf("read reply: bad bulk length %q", line)
		}
		if n < 0 {
			return "", nil
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(br, b); err != nil {
			return "", fmt.Errorf("read reply: %w", err)
		}
		return string(b[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return "", fmt.Errorf("read reply: bad array length %q", line)
		}
		var first error
		for range max(n, 0) {
			_, err := readReply(br)
			var re replyError
			if err != nil && !errors.As(err, &re) {
				return "", err
			}
			if first == nil {
				first = err
			}
		}
		if first != nil {
			return "", first
		}
		return fmt.Sprintf("array of %d", n), nil
	}
	return "", fmt.Errorf("read reply: unexpected %q", line)
}

// serverMajor asks a redis-server (or valkey-server) for its major version.
func serverMajor(bin string) (int, error) {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return 0, fmt.Errorf("%s --version: %w", bin, err)
	}
	_, v, ok := strings.Cut(string(out), " v=")
	if !ok {
		return 0, fmt.Errorf("%s --version: no version in %q", bin, strings.TrimSpace(string(out)))
	}
	major, _, _ := strings.Cut(v, ".")
	n, err := strconv.Atoi(major)
	if err != nil {
		return 0, fmt.Errorf("%s --version: bad version in %q", bin, strings.TrimSpace(string(out)))
	}
	return n, nil
}
