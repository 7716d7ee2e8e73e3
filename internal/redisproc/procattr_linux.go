package redisproc

import "syscall"

// sysProcAttr makes the kernel kill the server when its owner dies, so a
// test that panics or times out, or a program killed with -9, leaves no
// server behind. Its own process group keeps a Ctrl-C for the owner from
// reaching it: the owner's cleanup stops it.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
}
