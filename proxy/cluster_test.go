package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/resp"
)

// clusterRelay is one replproxy process relaying every shard of a cluster,
// one pipeline per shard, each with a standalone far-side replica.
type clusterRelay struct {
	cl      *redisproc.Cluster
	cfg     proxy.Config
	group   *proxy.Group
	ports   []int
	far     []*redisproc.Server
	logPath string
}

// shard i's current primary, found through the node the pipeline names.
func (r *clusterRelay) primary(t *testing.T, i int) *redisproc.Server {
	t.Helper()
	port := r.pipelineInfo(i, "replication")["master_port"]
	for _, n := range r.cl.Live() {
		if strconv.Itoa(n.Port) == port && n.Info("replication")["role"] == "master" {
			return n
		}
	}
	t.Fatalf("pipeline %d follows port %s, which is not a live primary", i, port)
	return nil
}

func (r *clusterRelay) pipelineInfo(i int, section string) map[string]string {
	tp := &testProxy{cfg: r.cfg.Expand()[i]}
	return tp.info(section)
}

func (r *clusterRelay) pipelineInt(i int, section, field string) int64 {
	v, err := strconv.ParseInt(r.pipelineInfo(i, section)[field], 10, 64)
	if err != nil {
		return -1
	}
	return v
}

// waitFollows waits until pipeline i streams from the node.
func (r *clusterRelay) waitFollows(t *testing.T, i int, node *redisproc.Server) {
	t.Helper()
	redisproc.Eventually(t, 60*time.Second, fmt.Sprintf("pipeline %d to follow %s", i, node.Addr()), func() (bool, string) {
		info := r.pipelineInfo(i, "replication")
		return info["master_port"] == strconv.Itoa(node.Port) && info["master_link_status"] == "up",
			info["master_port"] + " " + info["master_link_status"]
	})
}

// waitAllInSync checks every far-side replica against its shard's primary.
func (r *clusterRelay) waitAllInSync(t *testing.T) {
	t.Helper()
	for i := range r.far {
		redisproc.WaitInSync(t, syncTimeout, r.primary(t, i), r.far[i])
	}
}

func startClusterRelay(t *testing.T) *clusterRelay {
	t.Helper()
	// No replication PINGs: a primary that is taken over keeps PINGing
	// its replicas until gossip demotes it, and a PING that reaches the
	// proxy but not the heir puts the proxy ahead of the new primary, which
	// then full-syncs it, as it would a Redis replica (README).
	args := append([]string{"--repl-ping-replica-period", "3600", "--repl-timeout", "7200"}, masterArgs...)
	r := &clusterRelay{cl: redisproc.StartCluster(t, 3, 1, args...)}
	r.cfg = proxyConfig(t, "")
	r.cfg.MetricsListen = "127.0.0.1:" + strconv.Itoa(redisproc.FreePort(t))
	r.cfg.Master.Cluster.Seeds = []string{r.cl.Nodes[0].Addr(), r.cl.Nodes[1].Addr()}
	// A slow poll: failovers must be followed because the link broke.
	r.cfg.Master.Cluster.Poll = proxy.Duration(5 * time.Second)
	// Each shard is named by its replica's node ID: any member will do.
	for i, p := range r.cl.Primaries() {
		r.cfg.Pipelines = append(r.cfg.Pipelines, proxy.PipelineConfig{
			Name:   "shard" + strconv.Itoa(i),
			Listen: "127.0.0.1:" + strconv.Itoa(redisproc.FreePort(t)),
			Shard:  r.cl.ReplicasOf(p)[0].NodeID(),
		})
	}
	r.logPath = filepath.Join(t.TempDir(), "proxy.log")
	f, err := os.Create(r.logPath)
	if err != nil {
		t.Fatal(err)
	}
	resolved, err := r.cfg.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	r.group, err = proxy.NewGroup(resolved, zerolog.New(f).With().Timestamp().Logger(), "test")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.group.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("proxy stopped with error: %v", err)
		}
		f.Close()
		if t.Failed() {
			t.Logf("proxy log tail:\n%s", tail(r.logPath, 60))
		}
	})
	for i := range r.cfg.Pipelines {
		r.ports = append(r.ports, r.group.Port(i))
		r.far = append(r.far, redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(r.group.Port(i))))
	}
	return r
}

// Issue 12: one process relays a 3-primary, 3-replica Redis 7.0 cluster,
// one pipeline per shard, to standalone far-side replicas.
func TestClusterShardsAcrossFailoversAndReshard(t *testing.T) {
	r := startClusterRelay(t)
	cc := r.cl.ClusterClient()

	// Point 1: load through a cluster client; every far-side replica
	// equals its shard's primary.
	load := redisproc.StartClusterLoad(context.Background(), cc, 2000, 1)
	time.Sleep(2 * time.Second)
	if ops := load.Stop(); ops < 100 {
		t.Fatalf("cluster load made only %d writes", ops)
	}
	r.waitAllInSync(t)
	checkTopologyParsers(t, r.cl.Nodes[0])
	checkShardIntrospection(t, r)

	// Point 2: a manual failover in every shard (TAKEOVER in one), then
	// kill -9 of a primary. Each time the pipeline follows, partially.
	for i := range r.far {
		old := r.primary(t, i)
		rep := r.cl.ReplicasOf(old)[0]
		waitNoVolatileKeys(t, old)
		redisproc.WaitInSync(t, syncTimeout, old, rep)
		mode := []any{"CLUSTER", "FAILOVER"}
		if i == 1 {
			mode = append(mode, "TAKEOVER")
		}
		if _, err := rep.Do(mode...); err != nil {
			t.Fatal(err)
		}
		r.waitFollows(t, i, rep)
		runClusterLoad(cc, 300*time.Millisecond, int64(10+i))
		redisproc.WaitInSync(t, syncTimeout, rep, r.far[i])
	}
	victim := r.primary(t, 0)
	victimID := victim.NodeID()
	heir := r.cl.ReplicasOf(victim)[0]
	waitNoVolatileKeys(t, victim)
	redisproc.WaitInSync(t, syncTimeout, victim, heir, r.far[0])
	victim.Kill()
	r.waitFollows(t, 0, heir)
	r.cl.WaitOK(t, 60*time.Second)
	// go-redis 9.23 keeps dialing a killed node for its slots; a client
	// seeded with the live nodes sees the new map at once.
	cc = r.cl.ClusterClient()
	runClusterLoad(cc, time.Second, 20)
	r.waitAllInSync(t)
	for i := range r.far {
		expectInt(t, fmt.Sprintf("pipeline %d upstream_full_syncs", i), r.pipelineInt(i, "stats", "upstream_full_syncs"), 1)
		if got := r.pipelineInt(i, "stats", "upstream_partial_syncs"); got < 1 {
			t.Fatalf("pipeline %d upstream_partial_syncs %d: no partial resync", i, got)
		}
		expectInt(t, fmt.Sprintf("pipeline %d sync_full (far side)", i), r.pipelineInt(i, "stats", "sync_full"), 1)
		if got := r.pipelineInt(i, "shard", "shard_primary_changes"); got < 1 {
			t.Fatalf("pipeline %d shard_primary_changes %d", i, got)
		}
	}

	// Each repoint came from the broken link, not from a poll.
	logs, _ := os.ReadFile(r.logPath)
	if n := bytes.Count(logs, []byte("(link broke)")) + bytes.Count(logs, []byte("(link down)")); n < 4 {
		t.Fatalf("%d repoints were driven by a broken link, want 4:\n%s", n, grepLines(string(logs), "upstream master changed"))
	}

	// The shard's membership changes: the node pipeline 0 was configured
	// with is forgotten, a new node joins and takes over. The pipeline
	// follows by the members it saw last.
	if victimID != r.cfg.Pipelines[0].Shard {
		t.Fatalf("pipeline 0 names %s, the test meant to kill it but killed %s", r.cfg.Pipelines[0].Shard, victimID)
	}
	r.cl.ForgetNode(t, victim, victimID)
	joiner := r.cl.AddReplica(t, heir)
	redisproc.WaitInSync(t, syncTimeout, heir, joiner, r.far[0])
	takeOver(t, heir, joiner)
	r.waitFollows(t, 0, joiner)
	runClusterLoad(cc, 300*time.Millisecond, 25)
	redisproc.WaitInSync(t, syncTimeout, joiner, r.far[0])
	expectInt(t, "pipeline 0 upstream_full_syncs after the new member", r.pipelineInt(0, "stats", "upstream_full_syncs"), 1)

	// Point 3: a slot migration between two shards under load; the far
	// side stays equal per shard, and the pipelines' slot maps follow.
	from, to := r.primary(t, 1), r.primary(t, 2)
	load = redisproc.StartClusterLoad(context.Background(), cc, 2000, 30)
	out, err := exec.Command("redis-cli", "--cluster", "reshard", from.Addr(),
		"--cluster-from", from.NodeID(), "--cluster-to", to.NodeID(),
		"--cluster-slots", "200", "--cluster-yes").CombinedOutput()
	load.Stop()
	if err != nil {
		t.Fatalf("reshard: %v\n%s", err, out)
	}
	r.waitAllInSync(t)
	checkMigrationStream(t, r)
	redisproc.Eventually(t, 30*time.Second, "pipeline 2's slots to include the moved ones", func() (bool, string) {
		slots := r.pipelineInfo(2, "shard")["shard_slots"]
		return strings.Count(slots, ",") >= 1, slots
	})

	// Point 4: the proxy is never a cluster node.
	for _, n := range r.cl.Live() {
		res, err := n.Do("CLUSTER", "NODES")
		if err != nil {
			t.Fatal(err)
		}
		nodes := res.(string)
		if got := strings.Count(strings.TrimSpace(nodes), "\n") + 1; got != len(r.cl.Nodes) {
			t.Fatalf("%s lists %d nodes, want %d:\n%s", n.Addr(), got, len(r.cl.Nodes), nodes)
		}
		for _, port := range r.ports {
			if strings.Contains(nodes, ":"+strconv.Itoa(port)+"@") {
				t.Fatalf("%s lists the proxy port %d as a cluster node:\n%s", n.Addr(), port, nodes)
			}
		}
	}

	// Point 5: a cluster client seeded with a pipeline's port reads every
	// key from the far side.
	checkFarSideReads(t, r, cc)
}

// takeOver runs CLUSTER FAILOVER on a replica once its primary knows it,
// again should the first attempt time out (a node that has just joined).
func takeOver(t *testing.T, primary, replica *redisproc.Server) {
	t.Helper()
	id := replica.NodeID()
	redisproc.Eventually(t, 30*time.Second, "the primary to know its new replica", func() (bool, string) {
		res, _ := primary.Do("CLUSTER", "NODES")
		for _, l := range strings.Split(fmt.Sprint(res), "\n") {
			if f := strings.Fields(l); len(f) > 3 && f[0] == id && strings.Contains(f[2], "slave") && f[3] == primary.NodeID() {
				return true, ""
			}
		}
		return false, fmt.Sprint(res)
	})
	var asked time.Time
	redisproc.Eventually(t, 40*time.Second, "the new node to take over", func() (bool, string) {
		if replica.Info("replication")["role"] == "master" {
			return true, ""
		}
		if time.Since(asked) > 7*time.Second {
			asked = time.Now()
			if _, err := replica.Do("CLUSTER", "FAILOVER"); err != nil {
				return false, err.Error()
			}
		}
		return false, replica.LogTail(3)
	})
}

// slotRanges is the sorted "start-end" list of a CLUSTER SLOTS reply,
// parsed or raw.
func slotRanges(v any) string {
	var out []string
	switch v := v.(type) {
	case []redis.ClusterSlot:
		for _, s := range v {
			out = append(out, fmt.Sprintf("%d-%d", s.Start, s.End))
		}
	case []any:
		for _, e := range v {
			if r, ok := e.([]any); ok && len(r) > 1 {
				out = append(out, fmt.Sprintf("%v-%v", r[0], r[1]))
			}
		}
	}
	slices.Sort(out)
	return strings.Join(out, ",")
}

// waitNoVolatileKeys waits until a primary has expired every key the load
// gave a TTL. A primary that expires keys writes DELs into its stream; one
// written after its replica stopped reading (TAKEOVER does not wait, kill
// -9 cannot) leaves the proxy ahead of the new primary, and then a full
// sync is the right answer, for a chained redis-server too. The test wants
// the partial path, so it takes the expiries out of the race.
func waitNoVolatileKeys(t *testing.T, s *redisproc.Server) {
	t.Helper()
	redisproc.Eventually(t, 30*time.Second, "the load's TTL keys to expire on "+s.Addr(), func() (bool, string) {
		for db, v := range s.Info("keyspace") {
			if !strings.Contains(v, "expires=0,") {
				return false, db + ":" + v
			}
		}
		return true, ""
	})
}

// runClusterLoad writes through the cluster client for d.
func runClusterLoad(cc *redis.ClusterClient, d time.Duration, seed int64) {
	l := redisproc.StartClusterLoad(context.Background(), cc, 2000, seed)
	time.Sleep(d)
	l.Stop()
}

// checkTopologyParsers reads one live cluster both ways: the CLUSTER
// NODES fallback must find the same shards as CLUSTER SHARDS.
func checkTopologyParsers(t *testing.T, n *redisproc.Server) {
	t.Helper()
	shards, err := n.Do("CLUSTER", "SHARDS")
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := n.Do("CLUSTER", "NODES")
	if err != nil {
		t.Fatal(err)
	}
	a, b, err := proxy.ClusterTopologies(shards, nodes.(string))
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != 3 || !reflect.DeepEqual(a, b) {
		t.Fatalf("CLUSTER SHARDS and CLUSTER NODES disagree:\n%v\n%v", a, b)
	}
}

// checkShardIntrospection: INFO shard and the metrics carry node IDs and slots.
func checkShardIntrospection(t *testing.T, r *clusterRelay) {
	t.Helper()
	p := r.primary(t, 0)
	info := r.pipelineInfo(0, "shard")
	if info["shard_primary_id"] != p.NodeID() || info["shard"] != r.cfg.Pipelines[0].Shard || !strings.Contains(info["shard_members"], r.cfg.Pipelines[0].Shard) {
		t.Fatalf("INFO shard of pipeline 0: %v (primary %s)", info, p.NodeID())
	}
	if info["shard_slots"] == "" {
		t.Fatalf("INFO shard has no slots: %v", info)
	}
	resp, err := http.Get("http://" + r.cfg.MetricsListen + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := fmt.Sprintf(`pipeline="shard0",primary=%q,primary_id=%q`, p.Addr(), p.NodeID())
	if !bytes.Contains(body, []byte(want)) {
		t.Fatalf("metrics lack %s:\n%s", want, grepLines(string(body), "replproxy_cluster"))
	}
	if logs, _ := os.ReadFile(r.logPath); !bytes.Contains(logs, []byte(`"shard":"`+r.cfg.Pipelines[0].Shard)) {
		t.Fatal("the log lines do not carry the shard")
	}
}

func grepLines(text, sub string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// checkMigrationStream: what Redis 7.0 writes into the replication stream
// while redis-cli moves slots. The target shard's stream carries a
// RESTORE-ASKING per migrated key, the source's a DEL of each (MIGRATE is
// propagated as DEL); no CLUSTER SETSLOT reaches either.
func checkMigrationStream(t *testing.T, r *clusterRelay) {
	t.Helper()
	src, dst := streamCommands(t, r, 1), streamCommands(t, r, 2)
	deleted := map[string]bool{}
	for _, c := range src {
		if strings.EqualFold(c[0], "DEL") {
			for _, k := range c[1:] {
				deleted[k] = true
			}
		}
	}
	restored := 0
	for _, c := range dst {
		if strings.EqualFold(c[0], "RESTORE-ASKING") {
			restored++
			if !deleted[c[1]] {
				t.Fatalf("key %s was restored on the target shard but never deleted in the source's stream", c[1])
			}
		}
	}
	if restored == 0 {
		t.Fatal("the target shard's stream has no RESTORE-ASKING from the migration")
	}
	for _, c := range append(src, dst...) {
		if strings.EqualFold(c[0], "CLUSTER") {
			t.Fatalf("a stream carries %v", c)
		}
	}
}

// streamCommands parses everything pipeline i holds in its backlog.
func streamCommands(t *testing.T, r *clusterRelay, i int) [][]string {
	t.Helper()
	return streamCommandsIn(t, r.cfg.Expand()[i].DataDir)
}

// streamCommandsIn parses the stream in a data dir's backlog.
func streamCommandsIn(t *testing.T, dataDir string) [][]string {
	t.Helper()
	rd := resp.NewReader(bufio.NewReader(bytes.NewReader(streamBytes(t, dataDir))), resp.DefaultLimits())
	var out [][]string
	for {
		args, err := rd.ReadCommand()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("backlog in %s: %v", dataDir, err)
		}
		if len(args) > 1 {
			c := make([]string, len(args))
			for j, a := range args {
				c[j] = string(a)
			}
			out = append(out, c)
		}
	}
}

// streamBytes is everything a data dir's backlog holds, in offset order.
func streamBytes(t *testing.T, dataDir string) []byte {
	t.Helper()
	var all []byte
	err := filepath.Walk(filepath.Join(dataDir, "log"), func(path string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() || !strings.HasSuffix(path, ".seg") {
			return err
		}
		b, err := os.ReadFile(path)
		all = append(all, b...)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return all
}

// checkFarSideReads writes known keys on the cluster, then reads them all
// back through a cluster client that knows only a pipeline's port.
func checkFarSideReads(t *testing.T, r *clusterRelay, cc *redis.ClusterClient) {
	t.Helper()
	ctx := context.Background()
	const n = 300
	for i := range n {
		if err := cc.Set(ctx, "read:"+strconv.Itoa(i), i, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	r.waitAllInSync(t)
	far := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:" + strconv.Itoa(r.ports[1])}})
	defer far.Close()
	// The slot map comes from the proxy; the far-side replicas are
	// standalone and refuse CLUSTER commands.
	seed := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(r.ports[1])})
	defer seed.Close()
	// The proxy's map follows the cluster's within a poll.
	var slots []redis.ClusterSlot
	redisproc.Eventually(t, 30*time.Second, "the proxy's slot map to match the cluster's", func() (bool, string) {
		var err error
		slots, err = seed.ClusterSlots(ctx).Result()
		want, _ := r.primary(t, 0).Do("CLUSTER", "SLOTS")
		return err == nil && slotRanges(slots) == slotRanges(want), fmt.Sprint(slotRanges(slots), " want ", slotRanges(want), err)
	})
	farAddrs := map[string]bool{}
	for _, s := range r.far {
		farAddrs[s.Addr()] = true
	}
	covered := 0
	for _, s := range slots {
		covered += s.End - s.Start + 1
		for _, node := range s.Nodes {
			if !farAddrs[node.Addr] {
				t.Fatalf("CLUSTER SLOTS on the proxy names %s, not a far-side replica: %v", node.Addr, slots)
			}
		}
	}
	if covered != 16384 {
		t.Fatalf("CLUSTER SLOTS covers %d slots: %v", covered, slots)
	}
	before := int64(0)
	for _, s := range r.far {
		before += s.InfoInt("stats", "total_commands_processed")
	}
	for i := range n {
		got, err := far.Get(ctx, "read:"+strconv.Itoa(i)).Result()
		if err != nil || got != strconv.Itoa(i) {
			t.Fatalf("far-side read of read:%d: %q %v", i, got, err)
		}
	}
	after := int64(0)
	for _, s := range r.far {
		after += s.InfoInt("stats", "total_commands_processed")
	}
	if after-before < n {
		t.Fatalf("the far-side replicas processed %d commands for %d reads", after-before, n)
	}
	if shards, err := seed.ClusterShards(ctx).Result(); err != nil || len(shards) != 3 {
		t.Fatalf("CLUSTER SHARDS on the proxy: %v %v", shards, err)
	}
}

// On Redis 7.2+ a shard may be named by its shard ID (CLUSTER MYSHARDID),
// which no CLUSTER SHARDS or NODES reply of that version carries.
func TestClusterShardByShardID(t *testing.T) {
	bin := filepath.Join(redisproc.VersionsDir(), "redis-7.2.6", "src")
	if _, err := os.Stat(filepath.Join(bin, "redis-server")); err != nil {
		t.Skipf("Redis 7.2 is not built (%v)", err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	cl := redisproc.StartCluster(t, 3, 1)
	primary := cl.Primaries()[1]
	sid, err := primary.Do("CLUSTER", "MYSHARDID")
	if err != nil {
		t.Fatal(err)
	}
	cfg := proxyConfig(t, "")
	cfg.Master.Cluster = proxy.ClusterConfig{Seeds: []string{cl.Nodes[0].Addr()}, Shard: sid.(string), Poll: proxy.Duration(time.Second)}
	tp := startProxy(t, cfg)
	far := redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(tp.port))
	runClusterLoad(cl.ClusterClient(), 500*time.Millisecond, 1)
	redisproc.WaitInSync(t, syncTimeout, primary, far)
	if got := tp.info("shard")["shard_primary_id"]; got != primary.NodeID() {
		t.Fatalf("INFO shard_primary_id %s, want %s", got, primary.NodeID())
	}
}

// Valkey 8 replicates CLUSTER SETSLOT during a slot migration. The proxy
// relays it unchanged; a standalone far-side replica rejects it, logs the
// rejection, and stays equal to its shard's primary.
func TestClusterSetslotReachesStandaloneReplicas(t *testing.T) {
	bin := filepath.Join(redisproc.VersionsDir(), "valkey-8.0.1", "src")
	if _, err := os.Stat(filepath.Join(bin, "valkey-server")); err != nil {
		t.Skipf("Valkey 8 is not built (%v)", err)
	}
	// redisproc starts "redis-server": point that name at Valkey.
	shim := t.TempDir()
	if err := os.Symlink(filepath.Join(bin, "valkey-server"), filepath.Join(shim, "redis-server")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", shim+string(os.PathListSeparator)+os.Getenv("PATH"))
	// Valkey replicates SETSLOT only to a primary that has cluster replicas.
	cl := redisproc.StartCluster(t, 3, 1)
	from, to := cl.Primaries()[1], cl.Primaries()[2]
	cfg := proxyConfig(t, "")
	cfg.Master.Cluster = proxy.ClusterConfig{Seeds: []string{cl.Nodes[0].Addr()}, Shard: from.NodeID(), Poll: proxy.Duration(time.Second)}
	tp := startProxy(t, cfg)
	far := redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(tp.port))
	cc := cl.ClusterClient()
	runClusterLoad(cc, 500*time.Millisecond, 1)
	redisproc.WaitInSync(t, syncTimeout, from, far)

	if out, err := exec.Command("redis-cli", "--cluster", "reshard", from.Addr(), "--cluster-from", from.NodeID(),
		"--cluster-to", to.NodeID(), "--cluster-slots", "50", "--cluster-yes").CombinedOutput(); err != nil {
		t.Fatalf("reshard: %v\n%s", err, out)
	}
	runClusterLoad(cc, 300*time.Millisecond, 2)
	redisproc.WaitInSync(t, syncTimeout, from, far)
	setslots := 0
	for _, c := range streamCommandsIn(t, cfg.DataDir) {
		if strings.EqualFold(c[0], "CLUSTER") && strings.EqualFold(c[1], "SETSLOT") {
			setslots++
		}
	}
	if setslots == 0 {
		t.Fatal("no CLUSTER SETSLOT in the source shard's stream")
	}
	if log := far.LogTail(400); !strings.Contains(log, "sending an error to its") {
		t.Fatalf("the far-side replica did not log the rejection:\n%s", far.LogTail(20))
	}
}
