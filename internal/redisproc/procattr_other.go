//go:build !linux

package redisproc

import "syscall"

// sysProcAttr: only Linux can tie the child's life to ours; elsewhere the
// test cleanup is the only thing that stops the server.
func sysProcAttr() *syscall.SysProcAttr {
	return nil
}
