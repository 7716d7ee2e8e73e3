//go:build !linux

package redisproc

import "syscall"

// sysProcAttr: only Linux can tie the child's life to ours; elsewhere the
// owner's cleanup is the only thing that stops the server. Its own process
// group keeps a Ctrl-C for the owner from reaching it.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
