package wan

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// Dialer returns a dial function whose sockets are made inside network
// namespace ns, so that a program in the root namespace reaches a server
// that listens only there (a replproxy, which has no unix socket).
func Dialer(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		target, err := os.Open(filepath.Join("/var/run/netns", ns))
		if err != nil {
			return nil, fmt.Errorf("dial in %s: %w", ns, err)
		}
		defer target.Close()
		// The namespace belongs to the thread: this goroutine keeps it
		// from the moment it enters until it is back home.
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			return nil, fmt.Errorf("dial in %s: %w", ns, err)
		}
		defer home.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			return nil, fmt.Errorf("dial in %s: setns: %w", ns, err)
		}
		// The socket is made here, in ns, and stays there after we leave.
		conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if unix.Setns(int(home.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		} // else the thread stays locked, and Go ends it with this goroutine
		return conn, err
	}
}
