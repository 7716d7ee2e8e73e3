package restore

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/replproxy/replproxy/resp"
)

// ExportResult is what an export wrote.
type ExportResult struct {
	// From and To are the first and last offsets written, at command
	// boundaries: From rounded up, To rounded down, outside MULTI/EXEC.
	From, To int64
	DB       int // selected at the start of the file
	Commands int64
}

// Export writes the stream's commands in [from, to] to w as RESP, the
// format of an AOF and of redis-cli --pipe: a SELECT of the database in
// effect at from first, then every command but PING and REPLCONF, whole
// MULTI/EXEC blocks only. It reads from the newest kept snapshot at or
// before from, whose RDB says which database the stream starts in.
func Export(dataDir string, from, to int64, w io.Writer) (ExportResult, error) {
	src, err := openSource(dataDir)
	if err != nil {
		return ExportResult{}, err
	}
	defer src.close()
	if to >= src.end() {
		return ExportResult{}, fmt.Errorf("offset %d is past the stored stream, whose last whole byte is %d", to, src.end()-1)
	}
	if from > to {
		return ExportResult{}, fmt.Errorf("from %d is after to %d", from, to)
	}
	snap, err := src.newestAtOrBefore(from - 1)
	if err != nil {
		return ExportResult{}, fmt.Errorf("an export starts after a kept snapshot, where a command boundary is known: the earliest --from is %d", src.snaps[0].info.Offset+1)
	}
	db, _, err := streamDB(io.NewSectionReader(snap.f, 0, snap.info.Size))
	if err != nil {
		return ExportResult{}, fmt.Errorf("snapshot %s: %w", snap.info.File, err)
	}
	units, err := src.units(snap.info.Offset+1, to+1)
	if err != nil {
		return ExportResult{}, err
	}
	res := ExportResult{From: -1, To: from - 1}
	bw := bufio.NewWriterSize(w, 256<<10)
	for {
		u, err := units.next()
		if errors.Is(err, io.EOF) || errors.Is(err, errIncomplete) {
			break
		}
		if err != nil {
			return res, err
		}
		if u.start < from {
			db = selected(u, db)
			continue
		}
		if res.From < 0 {
			res.From, res.DB = u.start, db
			bw.Write(resp.AppendCommand(nil, "SELECT", strconv.Itoa(db)))
		}
		for _, c := range u.cmds {
			if c.replayed() {
				bw.Write(c.raw)
				res.Commands++
			}
		}
		res.To = u.lastByte()
	}
	if res.From < 0 {
		return res, fmt.Errorf("no whole command in offsets [%d, %d]", from, to)
	}
	if err := bw.Flush(); err != nil {
		return res, fmt.Errorf("write export: %w", err)
	}
	return res, nil
}

// selected follows the SELECTs of a unit.
func selected(u unit, db int) int {
	for _, c := range u.cmds {
		if c.name() == "SELECT" && len(c.args) == 2 {
			if n, err := strconv.Atoi(string(c.args[1])); err == nil {
				db = n
			}
		}
	}
	return db
}
