package redisproc

import "syscall"

// sysProcAttr makes the kernel kill redis-server when the test binary dies,
// so a test that panics or times out leaves no server behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
