package backlog

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Issue 23, point 10: a data dir that others can write to, or that another
// user owns, is refused; one the proxy creates (0700) or owns is used.
func TestUnsafeDataDirIsRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	os.Mkdir(dir, 0o777)
	os.Chmod(dir, 0o777) // past the umask
	if s, err := Open(dir, testOptions()); err == nil || !strings.Contains(err.Error(), "other users can write to it") {
		if s != nil {
			s.Close()
		}
		t.Fatalf("mode 0777: %v", err)
	}
	os.Chmod(dir, 0o700)
	if os.Geteuid() == 0 {
		os.Chown(dir, 4242, -1)
		if s, err := Open(dir, testOptions()); err == nil || !strings.Contains(err.Error(), "belongs to user 4242") {
			if s != nil {
				s.Close()
			}
			t.Fatalf("owned by another user: %v", err)
		}
		os.Chown(dir, os.Geteuid(), -1)
	}
	s, err := Open(dir, testOptions())
	if err != nil {
		t.Fatalf("mode 0700, own: %v", err)
	}
	s.Close()
}

// Issue 23, point 10: a symlink planted where a temp file will be written
// is removed, not followed: its target is left as it was.
func TestTempFilesNeverFollowSymlinks(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	s, err := Open(dir, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	victim := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(victim, []byte("precious"), 0o600)
	if err := os.Symlink(victim, s.dir.Refresh()+".tmp"); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveRefreshRecord(RefreshRecord{LastAttempt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious" {
		t.Fatalf("the planted symlink's target was overwritten: %q", b)
	}
	if fi, err := os.Lstat(s.dir.Refresh()); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("refresh.json: %v %v", fi, err)
	}
}

// A data dir reached through a symlink that another user owns is refused,
// even when the directory it points at is the proxy's own: in a sticky
// directory such as /tmp the link's owner can point it at a directory of
// theirs while the proxy runs, and the next segment or snapshot would be
// created there. Before, only the target was checked.
func TestDataDirSymlinkOfAnotherUserIsRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the symlink is given to another user")
	}
	base := t.TempDir()
	target := filepath.Join(base, "data")
	if err := os.Mkdir(target, 0o700); err != nil {
		t.Fatal(err)
	}
	shared := filepath.Join(base, "shared")
	os.Mkdir(shared, 0o777)
	os.Chmod(shared, 0o1777) // like /tmp
	link := filepath.Join(shared, "replproxy")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(link, 4242, 4242); err != nil {
		t.Fatal(err)
	}
	if s, err := Open(link, testOptions()); err == nil || !strings.Contains(err.Error(), "symlink that belongs to user 4242") {
		if s != nil {
			s.Close()
		}
		t.Fatalf("a data dir through another user's symlink: %v", err)
	}
	// The proxy's own symlink (root's here) is used.
	if err := os.Lchown(link, os.Geteuid(), -1); err != nil {
		t.Fatal(err)
	}
	s, err := Open(link, testOptions())
	if err != nil {
		t.Fatalf("a data dir through the proxy's own symlink: %v", err)
	}
	s.Close()
}
