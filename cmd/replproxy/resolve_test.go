package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// countedOpens writes a secrets file and counts, with inotify, how often
// it is opened: how often a start reads its secrets.
func countedOpens(t *testing.T, secret string) (path string, opens func() int) {
	path = filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(path, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	fd, err := syscall.InotifyInit1(syscall.IN_NONBLOCK | syscall.IN_CLOEXEC)
	if err != nil {
		t.Skipf("no inotify: %v", err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	// Closes too: inotify merges an event into the same one just before it.
	if _, err := syscall.InotifyAddWatch(fd, path, syscall.IN_OPEN|syscall.IN_CLOSE_NOWRITE); err != nil {
		t.Fatal(err)
	}
	n := 0
	return path, func() int {
		buf := make([]byte, 64<<10)
		for {
			got, err := syscall.Read(fd, buf)
			if err != nil || got <= 0 {
				return n // EAGAIN: every event so far is counted
			}
			for off := 0; off < got; {
				ev := (*syscall.InotifyEvent)(unsafe.Pointer(&buf[off]))
				if ev.Mask&syscall.IN_OPEN != 0 {
					n++
				}
				off += syscall.SizeofInotifyEvent + int(ev.Len)
			}
		}
	}
}

// Issue 27, point 2: one start of a process with two pipelines reads its
// secrets files once, and so loads secrets and validates once (Resolve
// does both, and nothing else does either); it read the metrics token
// once for the process and again for each pipeline.
func TestRunResolvesConfigOnce(t *testing.T) {
	token, opens := countedOpens(t, "token-4471\n")
	dir := t.TempDir()
	ports := []int{redisproc.FreePort(t), redisproc.FreePort(t)}
	body := fmt.Sprintf("data_dir: %s\nmetrics_bearer_token_file: %s\nlog:\n  level: error\nmaster:\n  cluster:\n    seeds: ['127.0.0.1:1']\npipelines:\n"+
		"  - {name: a, listen: '127.0.0.1:%d', shard: %s}\n  - {name: b, listen: '127.0.0.1:%d', shard: %s}\n",
		filepath.Join(dir, "data"), token, ports[0], strings.Repeat("a", 40), ports[1], strings.Repeat("b", 40))
	path := filepath.Join(dir, "c.yaml")
	os.WriteFile(path, []byte(body), 0o644)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- newApp().RunContext(ctx, []string{"replproxy", "run", "--config", path}) }()
	redisproc.Eventually(t, 20*time.Second, "both pipelines listening", func() (bool, string) {
		for _, port := range ports {
			c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				select {
				case err := <-done:
					t.Fatalf("run stopped: %v", err)
				default:
				}
				return false, err.Error()
			}
			c.Close()
		}
		return true, ""
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	if n := opens(); n != 1 {
		t.Fatalf("one start read metrics_bearer_token_file %d times, want once", n)
	}
}
