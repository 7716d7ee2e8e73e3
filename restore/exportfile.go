package restore

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
)

// ExportFile writes Export's output to path as restore writes its RDB:
// into a new temp file beside it (mode 0600, created exclusively), then
// fsync and rename. path then holds the old file or the whole export,
// never a truncated one; a symlink at path is replaced, never followed.
func ExportFile(dataDir string, from, to int64, path string) (ExportResult, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp-*")
	if err != nil {
		return ExportResult{}, fmt.Errorf("create a temp file for %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	w := bufio.NewWriterSize(tmp, 256<<10)
	res, err := Export(dataDir, from, to, w)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return res, fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return res, fmt.Errorf("rename to %s: %w", path, err)
	}
	return res, syncParent(path)
}

// syncParent makes the rename durable.
func syncParent(path string) error {
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("open the directory of %s: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync the directory of %s: %w", path, err)
	}
	return nil
}
