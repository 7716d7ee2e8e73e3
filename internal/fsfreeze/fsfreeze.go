// Package fsfreeze gives tests a filesystem that stops answering: a
// loop-mounted ext4 frozen with fsfreeze(8) for a fixed time. It needs
// root; without it, or without a loop device, the test is skipped with a
// message that says so.
package fsfreeze

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Mount mounts a fresh ext4 on a loop device and returns its
// mount point; it is unmounted and the device detached at cleanup (thawed
// first, should a test leave it frozen).
func Mount(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root, to mount a loop device and freeze it with fsfreeze")
	}
	for _, tool := range []string{"losetup", "mkfs.ext4", "mount", "umount", "fsfreeze"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipped: needs %s to freeze a filesystem: %v", tool, err)
		}
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	err = f.Truncate(512 << 20) // sparse
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		t.Skipf("skipped: no loop device (losetup: %v %s)", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { run(t, "losetup", "-d", dev) })
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", dev).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 %s: %v %s", dev, err, out)
	}
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", dev, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount %s: %v %s", dev, err, out)
	}
	t.Cleanup(func() {
		exec.Command("fsfreeze", "-u", mnt).Run() // fails unless frozen
		run(t, "umount", mnt)
	})
	return mnt
}

func run(t testing.TB, name string, args ...string) {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Errorf("%s %s: %v %s", name, strings.Join(args, " "), err, out)
	}
}

// Frozen is a filesystem frozen by a shell in its own session, which
// thaws it after a fixed time whatever happens to the test process (a
// hang, a kill).
type Frozen struct {
	At   time.Time // when the freeze took hold
	cmd  *exec.Cmd
	done chan struct{} // closed when the shell said it thawed, or died
}

// Freeze freezes the filesystem at mnt for d and returns once it is
// frozen.
func Freeze(t testing.TB, mnt string, d time.Duration) *Frozen {
	t.Helper()
	script := fmt.Sprintf("fsfreeze -f '%s' || exit 1; echo frozen; sleep %.3f; fsfreeze -u '%s'; echo thawed", mnt, d.Seconds(), mnt)
	cmd := exec.Command("sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	fr := &Frozen{cmd: cmd, done: make(chan struct{})}
	frozenLine := make(chan bool, 1)
	go func() {
		defer close(fr.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			switch sc.Text() {
			case "frozen":
				frozenLine <- true
			case "thawed":
				return
			}
		}
		frozenLine <- false
	}()
	t.Cleanup(func() { <-fr.done; cmd.Wait() })
	if !<-frozenLine {
		t.Fatalf("fsfreeze -f %s failed: %s", mnt, stderr.String())
	}
	fr.At = time.Now()
	return fr
}

// Thawed says whether the shell has thawed the filesystem.
func (fr *Frozen) Thawed() bool {
	select {
	case <-fr.done:
		return true
	default:
		return false
	}
}

// Wait waits for the thaw.
func (fr *Frozen) Wait(t testing.TB) {
	select {
	case <-fr.done:
	case <-time.After(time.Minute):
		t.Fatal("the filesystem was not thawed a minute after its freeze")
	}
}
