package backlog

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"
)

// RefreshRecord is what the snapshot refresher must remember across
// restarts: each rdb-only transfer forks the master, so a proxy in a crash
// loop must not ask for one at every start.
type RefreshRecord struct {
	LastAttempt time.Time `json:"last_attempt"`
	Failures    int       `json:"failures"` // consecutive failed or unusable refreshes
	// Attempts are the starts of the refreshes of the last hour, for
	// snapshot.max_refreshes_per_hour across restarts.
	Attempts []time.Time `json:"attempts,omitempty"`
}

// LoadRefreshRecord reads the record; a missing file is a zero record. A
// damaged one reads as an attempt just now: when in doubt, spare the master.
func (s *Store) LoadRefreshRecord() (RefreshRecord, error) {
	raw, err := os.ReadFile(s.dir.Refresh())
	if errors.Is(err, os.ErrNotExist) {
		return RefreshRecord{}, nil
	}
	var rec RefreshRecord
	if err == nil {
		err = json.Unmarshal(raw, &rec)
	}
	if err != nil {
		return RefreshRecord{LastAttempt: time.Now()}, fmt.Errorf("read %s: %w", s.dir.Refresh(), err)
	}
	return rec, nil
}

// SaveRefreshRecord replaces the record atomically. It is written apart
// from meta.json, outside the store's locks: losing it costs at most one
// early refresh.
func (s *Store) SaveRefreshRecord(rec RefreshRecord) error {
	raw, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode refresh record: %w", err)
	}
	return writeFileAtomic(s.dir.Refresh(), append(raw, '\n'), s.opt.Log.Sync)
}
