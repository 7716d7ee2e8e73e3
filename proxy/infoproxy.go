package proxy

import (
	"fmt"
	"sort"
	"time"

	"github.com/replproxy/replproxy/fanout"
	"github.com/replproxy/replproxy/upstream"
)

// proxyInfo fills INFO's proxy section: what replproxy knows beyond the
// fields of a Redis replica. Times are unix seconds; lags are seconds.
func (p *Proxy) proxyInfo() []fanout.KV {
	now := time.Now()
	st, lg := p.store.View()
	var out []fanout.KV
	kv := func(k string, v any) { out = append(out, fanout.KV{Key: k, Value: v}) }
	ready, why := p.readiness(now)
	kv("ready", boolInt(ready))
	kv("ready_reason", why)
	if lg != nil && st.End > st.First {
		if t, ok := lg.TimeAt(st.First); ok {
			kv("backlog_first_byte_time", t.Unix())
			kv("backlog_age_seconds", int64(now.Sub(t).Seconds()))
		}
		if t := lg.LastAppend(); !t.IsZero() {
			kv("backlog_last_byte_time", t.Unix())
		}
	}
	if t, ok := p.snapshotTime(st); ok {
		kv("snapshot_time", t.Unix())
		kv("snapshot_age_seconds", int64(now.Sub(t).Seconds()))
	}
	kv("snapshot_refreshes", p.snap.Refreshes.Load())
	kv("snapshot_refresh_failures", p.snap.Failures.Load())
	if at := p.link.LastAck.At.Load(); at > 0 {
		kv("last_ack_sent_offset", p.link.LastAck.Off.Load())
		kv("last_ack_sent_seconds_ago", int64(now.Sub(time.Unix(0, at)).Seconds()))
	}
	kv("upstream_bytes_received", p.link.WireBytes.Load())
	p.diskInfo(kv, now)
	kv("downstream_bytes_sent", p.fan.BytesSent())
	for i, r := range latestReplicas(p.fan.Replicas()) {
		kv(fmt.Sprintf("replica%d", i), fmt.Sprintf("addr=%s,state=%s,lag_bytes=%d,lag_seconds=%.1f,unknown_commands=%d",
			replicaName(r), r.State, max(st.End-r.SentOff, 0), replicaLag(r, st, lg, now).Seconds(), r.UnknownCommands))
	}
	works := p.progress.Works()
	sort.Slice(works, func(i, j int) bool { return works[i].Kind+works[i].Peer < works[j].Kind+works[j].Peer })
	for i, w := range works {
		line := fmt.Sprintf("kind=%s,peer=%s,done=%d,total=%d,percent=%.1f,rate_bytes=%d,eta_seconds=%.0f,elapsed_seconds=%d",
			w.Kind, w.Peer, w.Done, w.Total, w.Percent(), int64(w.Rate), w.ETA, int64(now.Sub(w.Started).Seconds()))
		if w.Kind == workRDBConversion {
			line += fmt.Sprintf(",keys=%d", w.Keys)
		}
		kv(fmt.Sprintf("work%d", i), line)
	}
	return out
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// diskInfo adds the data dir's space to INFO's proxy section.
func (p *Proxy) diskInfo(kv func(string, any), now time.Time) {
	if free, err := upstream.FreeBytes(p.cfg.DataDir); err == nil {
		kv("data_dir_free_bytes", free)
	}
	kv("damaged_bytes", p.store.DamagedBytes())
	kv("damaged_max_bytes", damagedMaxBytes(p.cfg))
	why, since := p.link.DiskWait()
	kv("upstream_waiting_for_space", boolInt(why != ""))
	if why != "" {
		kv("upstream_waiting_for_space_seconds", int64(now.Sub(since).Seconds()))
		kv("upstream_waiting_for_space_reason", why)
	}
}
