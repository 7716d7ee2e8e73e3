//go:build !linux

package restore

import "syscall"

// sysProcAttr puts the temporary server in its own process group, so a
// Ctrl-C to restore reaches it only through restore's own shutdown.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
