package upstream

import (
	"errors"
	"fmt"

	"github.com/replproxy/replproxy/rdbmeta"
)

// rdbSummary is what the proxy learned from a received RDB.
type rdbSummary struct {
	rdbmeta.Info
	// Note says why the metadata is incomplete, when it is; the RDB is
	// kept all the same.
	Note string
}

// checkRDB reads a received RDB's metadata before it becomes the snapshot.
// The check is metadata, not a gate: the bytes are relayed whatever
// version or opcodes they hold, because the replicas, not the proxy, judge
// the payload, and refusing an RDB only makes the master fork again for
// the same result. Two findings do stop it: a CRC-64 mismatch in a format
// known to end with one (the bytes were damaged in transit), and a
// repl-offset that contradicts the FULLRESYNC line.
func checkRDB(path string, wantOffset int64) (rdbSummary, error) {
	info, err := rdbmeta.ReadFile(path)
	sum := rdbSummary{Info: info}
	switch {
	case err == nil:
	case errors.Is(err, rdbmeta.ErrChecksum) && info.Known:
		return sum, fmt.Errorf("received RDB %s (%s): %w", path, info.Header(), err)
	default:
		sum.Note = err.Error()
	}
	if info.ReplOffset >= 0 && info.ReplOffset != wantOffset {
		return sum, fmt.Errorf("received RDB %s says repl-offset %d, the master announced %d", path, info.ReplOffset, wantOffset)
	}
	return sum, nil
}
