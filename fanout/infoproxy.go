package fanout

import (
	"strconv"
	"strings"
)

// infoSyncProgress reports an upstream full sync with the fields a Redis
// replica uses, so tools that read Redis show it unchanged.
func infoSyncProgress(b *strings.Builder, link LinkStatus) {
	field(b, "master_sync_total_bytes", link.SyncTotal)
	field(b, "master_sync_read_bytes", link.SyncBytes)
	if link.SyncTotal >= 0 {
		field(b, "master_sync_left_bytes", link.SyncTotal-link.SyncBytes)
		perc := 0.0
		if link.SyncTotal > 0 {
			perc = 100 * float64(link.SyncBytes) / float64(link.SyncTotal)
		}
		field(b, "master_sync_perc", formatFloat(perc))
	}
}

// infoProxy is replproxy's own section: what Redis has no field for.
func (s *Server) infoProxy(b *strings.Builder) {
	b.WriteString("# Proxy\r\n")
	if s.cfg.ProxyInfo == nil {
		return
	}
	for _, kv := range s.cfg.ProxyInfo() {
		field(b, kv.Key, kv.Value)
	}
}

func formatFloat(x float64) string { return strconv.FormatFloat(x, 'f', 2, 64) }
