package redisproc

import (
	"context"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A program owns servers as a test does: they run, wait for each other,
// and are gone after Close; a failure is an error from Try, not an exit.
func TestProgramOwnsServers(t *testing.T) {
	var log strings.Builder
	prog := NewProgram(context.Background(), t.TempDir(), &log)
	var master, replica *Server
	err := prog.Try(func() {
		master = Start(prog)
		replica = Start(prog, "--replicaof", master.Host, strconv.Itoa(master.Port))
		if _, err := master.Do("SET", "k", "v"); err != nil {
			prog.Fatalf("SET: %v", err)
		}
		WaitCaughtUp(prog, syncTimeout, master, replica)
	})
	if err != nil {
		t.Fatalf("Try: %v", err)
	}
	if got, err := replica.Do("GET", "k"); err != nil || got != "v" {
		t.Fatalf("GET k on the replica: %v, %v", got, err)
	}
	pids := []int{master.PID(), replica.PID()}
	prog.Close()
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); err == nil {
			t.Errorf("pid %d still runs after Close", pid)
		}
	}

	err = prog.Try(func() { Start(prog, "--no-such-option", "yes") })
	if err == nil || !strings.Contains(err.Error(), "start") {
		t.Fatalf("Try of a bad start: %v, want the start's error", err)
	}
	prog.Close()
	if !prog.Failed() || !strings.Contains(log.String(), "redis.out") {
		t.Fatalf("Failed() %v; the cleanup's log should show the server's output:\n%s", prog.Failed(), log.String())
	}
}

// A program's waits end when its context does (Ctrl-C), not at timeout.
func TestProgramWaitEndsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	prog := NewProgram(ctx, t.TempDir(), &strings.Builder{})
	defer prog.Close()
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	err := prog.Try(func() {
		Eventually(prog, time.Hour, "nothing", func() (bool, string) { return false, "never" })
	})
	if err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("Try: %v, want interrupted", err)
	}
	if took := time.Since(start); took > time.Minute {
		t.Fatalf("the wait took %s after its context ended", took)
	}
}

// A Command is a server that is not redis-server; here redis-server itself,
// given every argument, stands in for one (the bench runs replproxy so).
func TestStartCommand(t *testing.T) {
	path, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal(err)
	}
	s := StartCommand(t, Command{Path: path, Args: func(addr string) []string {
		_, port, _ := strings.Cut(addr, ":")
		return []string{"--port", port, "--bind", loopback, "--save", "", "--daemonize", "no"}
	}}, Place{})
	if s.InfoInt("server", "tcp_port") != int64(s.Port) {
		t.Fatalf("INFO tcp_port %d, want %d", s.InfoInt("server", "tcp_port"), s.Port)
	}
	s.Kill()
	s.Restart(t)
	if _, err := s.Do("PING"); err != nil {
		t.Fatalf("PING after restart: %v", err)
	}
}
