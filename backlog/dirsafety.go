package backlog

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// checkDataDir refuses a data dir that another local user could have
// prepared or can change: one that others may write to, or that belongs
// to another user (root excepted, as ssh's StrictModes accepts it; a
// Kubernetes volume is root's, group-writable by the pod's fsGroup).
// Whoever can write there could plant a snapshot or a symlink.
func checkDataDir(dir string) error {
	// A symlink at the path is checked too: its owner can point it at a
	// directory of their own while the proxy runs, and every file opened
	// after that (a new segment, a snapshot) would be created there.
	if lfi, err := os.Lstat(dir); err == nil && lfi.Mode()&fs.ModeSymlink != 0 {
		if st, ok := lfi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() && st.Uid != 0 {
			return fmt.Errorf("data dir %s is a symlink that belongs to user %d, not to the proxy's user %d: they could point it elsewhere; use the directory's own path", dir, st.Uid, os.Geteuid())
		}
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if fi.Mode().Perm()&0o002 != 0 {
		return fmt.Errorf("data dir %s has mode %#o: other users can write to it; chmod 700 it (the proxy creates its own 0700)", dir, fi.Mode().Perm())
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if uid := int(st.Uid); uid != os.Geteuid() && uid != 0 {
		return fmt.Errorf("data dir %s belongs to user %d, not to the proxy's user %d: chown it, or let the proxy create it", dir, uid, os.Geteuid())
	}
	return nil
}

// createTemp creates a temp file at path for a write-then-rename. A file
// left there by a crash is removed first (a symlink is removed, not
// followed), then the file is created exclusively and never through a
// symlink: one planted in between makes the create fail rather than
// overwrite the link's target.
func createTemp(path string) (*os.File, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("remove stale %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	return f, nil
}
