package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/fanout"
	"github.com/replproxy/replproxy/upstream"
)

// ClusterConfig makes the proxy relay one shard of a Redis Cluster and
// follow that shard's primary through failovers. The proxy stays a plain
// replica: it never joins the cluster.
type ClusterConfig struct {
	Seeds []string `yaml:"seeds"`
	// Shard names the shard by the node ID of any of its members (or, on
	// Redis 7.2+, by its shard ID). Never by slot: slots move between shards.
	Shard    string `yaml:"shard"`
	User     string `yaml:"user"`
	Password string `yaml:"password"`
	// Poll is how often the shard's primary is looked up; a broken link
	// triggers a lookup at once.
	Poll Duration `yaml:"poll"`
	// Announce, when set, is what the slot map lists for this shard
	// (host:port, the first as its primary) while a replica is online,
	// instead of the attached replicas' own addresses.
	Announce []string `yaml:"announce"`
}

func (c ClusterConfig) enabled() bool { return len(c.Seeds) > 0 }

var clusterIDPattern = regexp.MustCompile(`^[0-9a-f]{40}$`)

func (c ClusterConfig) validate() error {
	for _, a := range c.Seeds {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("master.cluster.seeds entry %q: want host:port: %w", a, err)
		}
	}
	if _, err := strconv.Atoi(c.Shard); err == nil {
		return fmt.Errorf("master.cluster.shard %q: a slot number cannot name a shard, since slots move between shards; give the node ID of any member (CLUSTER MYID)", c.Shard)
	}
	if !clusterIDPattern.MatchString(c.Shard) {
		return fmt.Errorf("master.cluster.shard %q: want the 40-hex-digit node ID of any member of the shard (CLUSTER MYID), or its shard ID on Redis 7.2+", c.Shard)
	}
	if c.Poll <= 0 {
		return fmt.Errorf("master.cluster.poll %s: must be positive, e.g. 2s", time.Duration(c.Poll))
	}
	if c.User != "" && c.Password == "" {
		return errors.New("master.cluster.user is set but master.cluster.password is not")
	}
	return validateAnnounce(c.Announce)
}

// clusterNode is one node as CLUSTER SHARDS or CLUSTER NODES shows it.
type clusterNode struct {
	ID      string
	Addr    string
	Primary bool
	Failed  bool
}

// clusterShard is a primary with its replicas and slot ranges.
type clusterShard struct {
	Slots [][2]int
	Nodes []clusterNode
}

func (s clusterShard) has(ids []string) bool {
	for _, n := range s.Nodes {
		if slices.Contains(ids, n.ID) {
			return true
		}
	}
	return false
}

// primary is the shard's serving primary; a failed one does not count,
// since its replica is about to take over.
func (s clusterShard) primary() (clusterNode, bool) {
	for _, n := range s.Nodes {
		if n.Primary && !n.Failed {
			return n, true
		}
	}
	return clusterNode{}, false
}

func (s clusterShard) slotsText() string {
	parts := make([]string, len(s.Slots))
	for i, r := range s.Slots {
		parts[i] = strconv.Itoa(r[0])
		if r[1] != r[0] {
			parts[i] += "-" + strconv.Itoa(r[1])
		}
	}
	return strings.Join(parts, ",")
}

// shardView is one lookup's result: the followed shard and the whole map.
type shardView struct {
	Shard   clusterShard
	Primary clusterNode
	All     []clusterShard
	From    string // the node that answered
	At      time.Time
}

// clusterWatch keeps the link on the shard's current primary.
type clusterWatch struct {
	cfg  ClusterConfig
	link *upstream.Link
	log  zerolog.Logger

	// tls, when the upstream side uses TLS, secures the lookups too (they
	// carry the password) and makes the nodes' tls-port the address.
	tls *TLSConfig

	mu      sync.Mutex
	view    shardView
	lastErr string
	changes atomic.Int64 // primary changes followed
}

func (w *clusterWatch) client(addr string) (*redis.Client, error) {
	opt := &redis.Options{
		Addr: addr, Username: w.cfg.User, Password: w.cfg.Password,
		Protocol: 2, DisableIdentity: true,
		DialTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second, MaxRetries: -1,
	}
	if w.tls != nil {
		var err error
		if opt.TLSConfig, err = w.tls.clientConfig(addr); err != nil {
			return nil, fmt.Errorf("cluster lookup TLS: %w", err)
		}
	}
	return redis.NewClient(opt), nil
}

// current is the last successful lookup.
func (w *clusterWatch) current() shardView {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.view
}

// candidates are the nodes to ask: the last known members of the cluster
// first, since seeds may have been replaced, then the configured seeds.
func (w *clusterWatch) candidates() []string {
	v := w.current()
	var out []string
	add := func(a string) {
		if a != "" && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	for _, n := range v.Shard.Nodes {
		add(n.Addr)
	}
	for _, s := range v.All {
		for _, n := range s.Nodes {
			if !n.Failed {
				add(n.Addr)
			}
		}
	}
	for _, a := range w.cfg.Seeds {
		add(a)
	}
	return out
}

// followed are the IDs that identify the shard: the configured one and
// every member seen last time, so the shard is still found after the
// configured node has been replaced.
func (w *clusterWatch) followed() []string {
	ids := []string{w.cfg.Shard}
	for _, n := range w.current().Shard.Nodes {
		ids = append(ids, n.ID)
	}
	return ids
}

// resolve asks the nodes in turn for the shard and its primary.
func (w *clusterWatch) resolve(ctx context.Context) (shardView, error) {
	var errs []string
	for _, addr := range w.candidates() {
		v, err := w.resolveAt(ctx, addr)
		if err == nil {
			return v, nil
		}
		if ctx.Err() != nil {
			return shardView{}, ctx.Err()
		}
		errs = append(errs, fmt.Sprintf("%s: %v", addr, err))
	}
	return shardView{}, fmt.Errorf("no cluster node named a primary for shard %s: %s", w.cfg.Shard, strings.Join(errs, "; "))
}

func (w *clusterWatch) resolveAt(ctx context.Context, addr string) (shardView, error) {
	c, err := w.client(addr)
	if err != nil {
		return shardView{}, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	all, err := clusterTopology(ctx, c, w.tls != nil)
	if err != nil {
		return shardView{}, err
	}
	ids := w.followed()
	if !slices.ContainsFunc(all, func(s clusterShard) bool { return s.has(ids) }) {
		// On 7.2+ the configured name may be a shard ID, which only the
		// nodes themselves report.
		if id, ok := w.shardIDMember(ctx, all); ok {
			ids = append(ids, id)
		}
	}
	shard, ok := pickShard(all, ids)
	if !ok {
		return shardView{}, fmt.Errorf("no shard has a member among %v", ids)
	}
	p, ok := shard.primary()
	if !ok {
		return shardView{}, errors.New("the shard has no serving primary (a failover may be in progress)")
	}
	if len(shard.Slots) == 0 {
		// Also how a node that is joining as a replica looks for a moment.
		return shardView{}, fmt.Errorf("the shard of %s owns no slots", p.ID)
	}
	return shardView{Shard: shard, Primary: p, All: all, From: addr, At: time.Now()}, nil
}

// pickShard prefers, among shards with a followed member, one that owns
// slots and has a serving primary: a failed old primary shows up alone,
// slotless, until it returns as a replica.
func pickShard(all []clusterShard, ids []string) (clusterShard, bool) {
	best, bestScore := clusterShard{}, -1
	for _, s := range all {
		if !s.has(ids) {
			continue
		}
		score := 0
		if _, ok := s.primary(); ok {
			score += 2
		}
		if len(s.Slots) > 0 {
			score++
		}
		if score > bestScore {
			best, bestScore = s, score
		}
	}
	return best, bestScore >= 0
}

// shardIDMember asks each node for CLUSTER MYSHARDID (7.2+) and returns the
// node ID of one whose shard ID is the configured name.
func (w *clusterWatch) shardIDMember(ctx context.Context, all []clusterShard) (string, bool) {
	for _, s := range all {
		for _, n := range s.Nodes {
			if n.Failed {
				continue
			}
			c, err := w.client(n.Addr)
			if err != nil {
				return "", false
			}
			id, err := c.Do(ctx, "CLUSTER", "MYSHARDID").Text()
			c.Close()
			if err != nil {
				return "", false // before 7.2: no shard IDs at all
			}
			if id == w.cfg.Shard {
				return n.ID, true
			}
		}
	}
	return "", false
}

// clusterTopology reads CLUSTER SHARDS, or CLUSTER NODES where SHARDS is
// missing (before 7.0).
func clusterTopology(ctx context.Context, c *redis.Client, useTLS bool) ([]clusterShard, error) {
	res, err := c.Do(ctx, "CLUSTER", "SHARDS").Result()
	if err == nil {
		return parseClusterShards(res, useTLS)
	}
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return nil, fmt.Errorf("cluster shards: %w", err)
	}
	text, nerr := c.Do(ctx, "CLUSTER", "NODES").Text()
	if nerr != nil {
		return nil, fmt.Errorf("cluster shards: %v; cluster nodes: %w", err, nerr)
	}
	return parseClusterNodes(text)
}

// parseClusterShards reads the RESP2 form: maps as flat key/value arrays.
// With useTLS, a node's tls-port is its address where it has one.
func parseClusterShards(res any, useTLS bool) ([]clusterShard, error) {
	list, ok := res.([]any)
	if !ok {
		return nil, fmt.Errorf("cluster shards: unexpected reply %T", res)
	}
	var out []clusterShard
	for _, raw := range list {
		m := flatMap(raw)
		var s clusterShard
		slots, _ := m["slots"].([]any)
		for i := 0; i+1 < len(slots); i += 2 {
			a, _ := slots[i].(int64)
			b, _ := slots[i+1].(int64)
			s.Slots = append(s.Slots, [2]int{int(a), int(b)})
		}
		nodes, _ := m["nodes"].([]any)
		for _, rn := range nodes {
			n := flatMap(rn)
			host := fmt.Sprint(n["endpoint"])
			if host == "" || host == "?" || n["endpoint"] == nil {
				host = fmt.Sprint(n["ip"])
			}
			port, _ := n["port"].(int64)
			if tlsPort, ok := n["tls-port"].(int64); ok && (useTLS || port == 0) {
				port = tlsPort
			}
			s.Nodes = append(s.Nodes, clusterNode{
				ID:      fmt.Sprint(n["id"]),
				Addr:    net.JoinHostPort(host, strconv.FormatInt(port, 10)),
				Primary: n["role"] == "master",
				Failed:  n["health"] == "fail",
			})
		}
		out = append(out, s)
	}
	return out, nil
}

func flatMap(v any) map[string]any {
	m := map[string]any{}
	list, _ := v.([]any)
	for i := 0; i+1 < len(list); i += 2 {
		if k, ok := list[i].(string); ok {
			m[k] = list[i+1]
		}
	}
	return m
}

// parseClusterNodes groups CLUSTER NODES lines into shards: a primary and
// the replicas that name it.
func parseClusterNodes(text string) ([]clusterShard, error) {
	byPrimary := map[string]*clusterShard{}
	var order []string
	shard := func(id string) *clusterShard {
		if s, ok := byPrimary[id]; ok {
			return s
		}
		s := &clusterShard{}
		byPrimary[id] = s
		order = append(order, id)
		return s
	}
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			return nil, fmt.Errorf("cluster nodes: malformed line %q", line)
		}
		flags := strings.Split(f[2], ",")
		if slices.Contains(flags, "noaddr") || slices.Contains(flags, "handshake") {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		n := clusterNode{ID: f[0], Addr: addr, Primary: slices.Contains(flags, "master"), Failed: slices.Contains(flags, "fail")}
		key := f[3]
		if n.Primary {
			key = n.ID
		}
		s := shard(key)
		s.Nodes = append(s.Nodes, n)
		if n.Primary {
			s.Slots = parseSlotRanges(f[8:])
		}
	}
	out := make([]clusterShard, 0, len(order))
	for _, id := range order {
		out = append(out, *byPrimary[id])
	}
	return out, nil
}

func parseSlotRanges(fields []string) [][2]int {
	var out [][2]int
	for _, f := range fields {
		if strings.HasPrefix(f, "[") {
			continue // a slot being imported or migrated: still the source's
		}
		a, b, isRange := strings.Cut(f, "-")
		lo, err := strconv.Atoi(a)
		if err != nil {
			continue
		}
		hi := lo
		if isRange {
			if hi, err = strconv.Atoi(b); err != nil {
				continue
			}
		}
		out = append(out, [2]int{lo, hi})
	}
	return out
}

// resolveUntil blocks until some node names the shard's primary.
func (w *clusterWatch) resolveUntil(ctx context.Context) (string, error) {
	for {
		v, err := w.resolve(ctx)
		if err == nil {
			w.adopt(v, "at startup")
			return v.Primary.Addr, nil
		}
		w.noteErr(err)
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// run polls, and at once whenever the link leaves the connected state,
// then quickly until it is back: a dead primary is replaced within the
// cluster's node timeout, and the proxy should not wait a poll for it.
func (w *clusterWatch) run(ctx context.Context) {
	const urgent = 250 * time.Millisecond
	timer := time.NewTimer(time.Duration(w.cfg.Poll))
	defer timer.Stop()
	why := "poll"
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.link.Down():
			why = "link broke"
			w.log.Info().Msg("upstream link broke; looking up the shard's primary now")
		case <-timer.C:
		}
		v, err := w.resolve(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			w.noteErr(err)
		} else if w.adopt(v, why) {
			w.changes.Add(1)
		}
		next := time.Duration(w.cfg.Poll)
		why = "poll"
		if w.link.LinkStatus().State != fanout.LinkConnected {
			next, why = min(next, urgent), "link down"
		}
		timer.Reset(next)
	}
}

// adopt stores a lookup and repoints the link if the primary moved; it
// reports whether it did.
func (w *clusterWatch) adopt(v shardView, why string) bool {
	w.mu.Lock()
	prev := w.view
	w.view, w.lastErr = v, ""
	w.mu.Unlock()
	if prev.Primary.ID != v.Primary.ID || prev.Shard.slotsText() != v.Shard.slotsText() || len(prev.Shard.Nodes) != len(v.Shard.Nodes) {
		w.log.Info().Str("primary_id", v.Primary.ID).Str("primary", v.Primary.Addr).Str("slots", v.Shard.slotsText()).
			Strs("members", nodeIDs(v.Shard)).Str("answered_by", v.From).Msg("cluster shard view")
	}
	if w.link.Addr() == v.Primary.Addr {
		return false
	}
	return w.link.Repoint(v.Primary.Addr, fmt.Sprintf("cluster: shard primary is %s (%s) per %s", v.Primary.ID, why, v.From))
}

func (w *clusterWatch) noteErr(err error) {
	w.mu.Lock()
	changed := w.lastErr != err.Error()
	w.lastErr = err.Error()
	w.mu.Unlock()
	if changed {
		w.log.Warn().Err(err).Msg("cannot find the shard's primary; retrying")
	}
}

func nodeIDs(s clusterShard) []string {
	out := make([]string, len(s.Nodes))
	for i, n := range s.Nodes {
		out[i] = n.ID
	}
	return out
}

var (
	descShard      = prometheus.NewDesc("replproxy_cluster_shard_info", "The cluster shard relayed: its followed name, primary and slots (always 1).", []string{"shard", "primary_id", "primary", "slots"}, nil)
	descShardMoves = prometheus.NewDesc("replproxy_cluster_primary_changes_total", "Times the proxy followed the shard to a new primary.", nil, nil)
)

// collect adds the shard's metrics, so that the far side can be mapped back.
func (w *clusterWatch) collect(gauge, counter func(*prometheus.Desc, float64, ...string)) {
	v := w.current()
	gauge(descShard, 1, w.cfg.Shard, v.Primary.ID, v.Primary.Addr, v.Shard.slotsText())
	counter(descShardMoves, float64(w.changes.Load()))
}

// info is the INFO shard section: enough to map the far side back to the
// cluster (node IDs, addresses, slots).
func (w *clusterWatch) info() []fanout.KV {
	v := w.current()
	w.mu.Lock()
	lastErr := w.lastErr
	w.mu.Unlock()
	members := make([]string, len(v.Shard.Nodes))
	for i, n := range v.Shard.Nodes {
		role := "replica"
		if n.Primary {
			role = "primary"
		}
		members[i] = fmt.Sprintf("%s@%s:%s", n.ID, n.Addr, role)
	}
	age := int64(-1)
	if !v.At.IsZero() {
		age = int64(time.Since(v.At).Seconds())
	}
	return []fanout.KV{
		{Key: "shard", Value: w.cfg.Shard},
		{Key: "shard_primary_id", Value: v.Primary.ID},
		{Key: "shard_primary_addr", Value: v.Primary.Addr},
		{Key: "shard_slots", Value: v.Shard.slotsText()},
		{Key: "shard_members", Value: strings.Join(members, ",")},
		{Key: "shard_primary_changes", Value: w.changes.Load()},
		{Key: "shard_view_age_seconds", Value: age},
		{Key: "shard_view_error", Value: lastErr},
	}
}

// slotMap is the far side's slot map over the proxies of one process: the
// freshest pipeline's view of the whole cluster (one view, so that ranges
// never overlap mid-migration), each shard served by the replicas attached
// to the pipeline that relays it. A shard nobody here relays, or with no
// online replica, is left out, since nothing could answer for it.
func slotMap(proxies []*Proxy) []fanout.SlotShard {
	var fresh shardView
	for _, p := range proxies {
		if p.cluster != nil {
			if v := p.cluster.current(); v.At.After(fresh.At) {
				fresh = v
			}
		}
	}
	var out []fanout.SlotShard
	for _, s := range fresh.All {
		if len(s.Slots) == 0 {
			continue
		}
		for _, p := range proxies {
			if p.cluster == nil || !s.has(p.cluster.followed()) {
				continue
			}
			if nodes := farEndpoints(p); len(nodes) > 0 {
				out = append(out, fanout.SlotShard{Slots: s.Slots, Nodes: nodes})
			}
			break
		}
	}
	return out
}

// farEndpoints lists a shard's far-side addresses. A replica-role client
// may announce any address (REPLCONF ip-address), and the slot map steers
// far-side clients, their AUTH included: so the map lists only addresses
// the operator configured (master.cluster.announce, or a pipeline's
// announce), or else replicas that announced the address they connect from.
func farEndpoints(p *Proxy) []fanout.Endpoint {
	var nodes []fanout.Endpoint
	for _, r := range p.fan.Replicas() {
		if r.State == fanout.StateOnline && r.Port > 0 && r.AnnouncedOwnAddress() {
			nodes = append(nodes, fanout.Endpoint{IP: r.IP, Port: r.Port})
		}
	}
	if announce := p.cfg.Master.Cluster.Announce; len(announce) > 0 {
		return configuredEndpoints(p.fan.Replicas(), announce)
	}
	return nodes
}

// configuredEndpoints is the operator's list, while any replica is online
// to answer for the shard.
func configuredEndpoints(replicas []fanout.ReplicaInfo, announce []string) []fanout.Endpoint {
	online := false
	for _, r := range replicas {
		online = online || r.State == fanout.StateOnline
	}
	if !online {
		return nil
	}
	out := make([]fanout.Endpoint, 0, len(announce))
	for _, a := range announce {
		host, port, _ := net.SplitHostPort(a) // validated
		n, _ := strconv.Atoi(port)
		out = append(out, fanout.Endpoint{IP: host, Port: n})
	}
	return out
}

func validateAnnounce(addrs []string) error {
	for _, a := range addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" {
			return fmt.Errorf("cluster announce entry %q: want host:port", a)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("cluster announce entry %q: the port must be 1-65535", a)
		}
	}
	return nil
}
