package proxy

import (
	"slices"
	"strings"

	"github.com/replproxy/replproxy/backlog"
)

// SetBacklogSync replaces fsync for every file of the data dir: a test's
// way to make the disk fail.
func SetBacklogSync(cfg *Config, sync backlog.SyncFunc) { cfg.Backlog.syncHook = sync }

// ClusterTopologies parses both replies, so that a test can check the
// CLUSTER NODES fallback against CLUSTER SHARDS on a live cluster.
func ClusterTopologies(shards any, nodes string) (fromShards, fromNodes [][]string, err error) {
	a, err := parseClusterShards(shards, false)
	if err != nil {
		return nil, nil, err
	}
	b, err := parseClusterNodes(nodes)
	return summarize(a), summarize(b), err
}

// summarize is each shard as "slots primary-id member-ids...", sorted
// the same way whichever reply it came from.
func summarize(shards []clusterShard) [][]string {
	var out [][]string
	for _, s := range shards {
		row := []string{s.slotsText()}
		if p, ok := s.primary(); ok {
			row = append(row, p.ID+"@"+p.Addr)
		}
		ids := nodeIDs(s)
		slices.Sort(ids)
		out = append(out, append(row, ids...))
	}
	slices.SortFunc(out, func(a, b []string) int { return strings.Compare(strings.Join(a, " "), strings.Join(b, " ")) })
	return out
}
