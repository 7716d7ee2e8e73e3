package proxy

import (
	"fmt"
	"os"
	"syscall"
)

// checkSecretFile refuses, as ssh refuses a private key, a password file
// that other users can read: a password is only as secret as its file.
// Readable by its group is accepted only when that group is the proxy's
// own (a Kubernetes Secret mounted with fsGroup is root's, group-readable
// by the pod's group).
func (c *Config) checkSecretFile(path string) error {
	if c.AllowInsecureSecretFiles {
		return nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil // reading it reports why
	}
	mode := fi.Mode().Perm()
	groupOK := false
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		groupOK = int(st.Gid) == os.Getegid()
	}
	if mode&0o004 != 0 || (mode&0o040 != 0 && !groupOK) {
		return fmt.Errorf("password file %s has mode %#o: other users can read it; chmod 600 it (or set allow_insecure_secret_files: yes)", path, mode)
	}
	return nil
}
