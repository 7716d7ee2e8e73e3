package redisproc

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// keyKinds are the key name prefixes. Each kind only ever receives commands
// of its own type, so the load never provokes WRONGTYPE.
var keyKinds = [...]string{"str", "cnt", "list", "set", "hash", "zset", "stream", "hll", "bits", "tmp"}

const (
	longTTL = time.Hour // outlives any test: the expiry flag must replicate, the key must not vanish

	// Size limits keep each database at a few tens of MB whatever the run
	// length, so full resyncs stay fast.
	maxValue     = 20 << 10
	maxStringLen = 64 << 10
	listKeep     = 50
	streamKeep   = 50
	poolSize     = 32 << 10

	groupStream = "stream:grouped" // outside the stream:<n> keyspace, so never deleted
	groupName   = "g1"

	dropBackoff = 50 * time.Millisecond
)

// evalScript touches three types in one atomic step and writes a value
// computed inside the script, which replicas must receive as effects.
const evalScript = `
local n = redis.call('HINCRBY', KEYS[1], 'evals', 1)
redis.call('LPUSH', KEYS[2], ARGV[1] .. ':' .. n)
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
redis.call('SET', KEYS[3], string.rep(ARGV[1], n % 5 + 1), 'EX', 3600)
return n`

type weightedOp struct {
	name   string
	weight int
	run    func(context.Context) error
}

// worker is one load goroutine. It owns a client per database and its own
// random source, and spreads its operations over all databases.
type worker struct {
	load    *Load
	id      int
	clients []*redis.Client // index = database
	rng     *rand.Rand
	perKind int

	// The database of the current operation; the op methods use these.
	c  *redis.Client
	db int

	text, binary []byte // value pools; values are slices of them
	ops          []weightedOp
	totalWeight  int
	seq          int64
}

func newWorker(l *Load, id int, clients []*redis.Client, opt LoadOptions) *worker {
	w := &worker{
		load:    l,
		id:      id,
		clients: clients,
		rng:     rand.New(rand.NewPCG(uint64(opt.Seed), uint64(id)+1)),
		perKind: opt.KeySpace / len(keyKinds),
	}
	w.text, w.binary = w.valuePools()
	w.ops = []weightedOp{
		{"set", 10, w.set}, {"incr", 5, w.incr}, {"append", 4, w.append},
		{"setrange", 3, w.setRange}, {"getset", 2, w.getSet},
		{"lpush", 4, w.lpush}, {"rpush", 3, w.rpush}, {"ltrim", 2, w.ltrim}, {"lpop", 2, w.lpop},
		{"sadd", 4, w.sadd}, {"srem", 2, w.srem},
		{"hset", 4, w.hset}, {"hdel", 2, w.hdel}, {"hincrby", 3, w.hincrBy},
		{"zadd", 4, w.zadd}, {"zincrby", 2, w.zincrBy}, {"zrem", 2, w.zrem},
		{"xadd", 4, w.xadd}, {"xreadgroup", 3, w.streamGroup},
		{"pfadd", 3, w.pfadd}, {"setbit", 3, w.setBit},
		{"set-px", 4, w.shortLived}, {"pexpire", 2, w.pexpire},
		{"multi", 3, w.multi}, {"eval", 3, w.eval},
		{"del", 1, w.del}, {"unlink", 1, w.unlink},
	}
	for _, op := range w.ops {
		w.totalWeight += op.weight
	}
	return w
}

func (w *worker) close() {
	for _, c := range w.clients {
		_ = c.Close() // nothing useful to do with a close error at the end of a load
	}
}

// run issues one operation per interval (or back to back for 0) until ctx
// is done.
func (w *worker) run(ctx context.Context, interval time.Duration) {
	defer w.close()
	next := time.Now()
	for ctx.Err() == nil {
		if interval > 0 {
			next = next.Add(interval)
			// After an outage, resume the pace instead of bursting to catch up.
			if time.Since(next) > time.Second {
				next = time.Now()
			}
			if !sleepCtx(ctx, time.Until(next)) {
				return
			}
		}
		w.db = w.rng.IntN(len(w.clients))
		w.c = w.clients[w.db]
		op := w.pick()
		w.seq++
		if w.load.record(ctx, w.db, op.name, op.run(ctx)) {
			sleepCtx(ctx, dropBackoff)
		}
	}
}

// sleepCtx reports whether it slept the whole duration.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (w *worker) pick() weightedOp {
	n := w.rng.IntN(w.totalWeight)
	for _, op := range w.ops {
		if n < op.weight {
			return op
		}
		n -= op.weight
	}
	panic("unreachable: weights changed after newWorker")
}

// Keys, members and values.

func (w *worker) valuePools() (text, binary []byte) {
	const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 "
	text = make([]byte, poolSize)
	binary = make([]byte, poolSize)
	for i := range text {
		text[i] = letters[w.rng.IntN(len(letters))]
		binary[i] = byte(w.rng.Uint32())
		if i%7 == 0 {
			binary[i] = 0 // NUL bytes trip up code that treats values as C strings
		}
	}
	return text, binary
}

func (w *worker) key(kind string) string {
	return fmt.Sprintf("%s:%d", kind, w.rng.IntN(w.perKind))
}

func (w *worker) anyKey() string {
	return w.key(keyKinds[w.rng.IntN(len(keyKinds))])
}

// valueSize is mostly small, sometimes a few KB, rarely up to 20 KB.
func (w *worker) valueSize() int {
	switch p := w.rng.IntN(100); {
	case p < 70:
		return 10 + w.rng.IntN(90)
	case p < 95:
		return 100 + w.rng.IntN(1900)
	default:
		return 2000 + w.rng.IntN(maxValue-2000+1)
	}
}

func (w *worker) value() []byte { return w.slice(w.valueSize()) }

func (w *worker) smallValue() []byte { return w.slice(10 + w.rng.IntN(90)) }

// slice takes n bytes of the text pool, or one time in five of the binary one.
func (w *worker) slice(n int) []byte {
	pool := w.text
	if w.rng.IntN(5) == 0 {
		pool = w.binary
	}
	off := w.rng.IntN(len(pool) - n + 1)
	return pool[off : off+n]
}

func (w *worker) member() string { return fmt.Sprintf("m%d", w.rng.IntN(200)) }

// values returns 1..n values for variadic commands.
func (w *worker) values(n int) []any {
	vs := make([]any, 1+w.rng.IntN(n))
	for i := range vs {
		vs[i] = w.value()
	}
	return vs
}

func (w *worker) members(n int) []any {
	ms := make([]any, 1+w.rng.IntN(n))
	for i := range ms {
		ms[i] = w.member()
	}
	return ms
}

func (w *worker) shortTTL() time.Duration {
	return time.Duration(200+w.rng.IntN(1301)) * time.Millisecond
}

func (w *worker) score() float64 { return float64(w.rng.IntN(100000)) / 100 }

// Strings.

func (w *worker) set(ctx context.Context) error {
	var ttl time.Duration
	if w.rng.IntN(10) < 3 {
		ttl = longTTL
	}
	return w.c.Set(ctx, w.key("str"), w.value(), ttl).Err()
}

func (w *worker) incr(ctx context.Context) error {
	return w.c.Incr(ctx, w.key("cnt")).Err()
}

func (w *worker) append(ctx context.Context) error {
	key := w.key("str")
	n, err := w.c.Append(ctx, key, string(w.smallValue())).Result()
	if err == nil && n > maxStringLen {
		err = w.c.Set(ctx, key, w.value(), 0).Err()
	}
	return err
}

func (w *worker) setRange(ctx context.Context) error {
	return w.c.SetRange(ctx, w.key("str"), int64(w.rng.IntN(maxValue)), string(w.smallValue())).Err()
}

func (w *worker) getSet(ctx context.Context) error {
	return w.c.GetSet(ctx, w.key("str"), w.value()).Err()
}

func (w *worker) pfadd(ctx context.Context) error {
	elems := make([]any, 1+w.rng.IntN(5))
	for i := range elems {
		elems[i] = fmt.Sprintf("e%d", w.rng.IntN(10000))
	}
	return w.c.PFAdd(ctx, w.key("hll"), elems...).Err()
}

func (w *worker) setBit(ctx context.Context) error {
	return w.c.SetBit(ctx, w.key("bits"), int64(w.rng.IntN(100000)), w.rng.IntN(2)).Err()
}

// Lists.

func (w *worker) lpush(ctx context.Context) error {
	return w.c.LPush(ctx, w.key("list"), w.values(5)...).Err()
}

func (w *worker) rpush(ctx context.Context) error {
	return w.c.RPush(ctx, w.key("list"), w.values(5)...).Err()
}

func (w *worker) ltrim(ctx context.Context) error {
	return w.c.LTrim(ctx, w.key("list"), 0, listKeep-1).Err()
}

func (w *worker) lpop(ctx context.Context) error {
	return w.c.LPop(ctx, w.key("list")).Err()
}

// Sets, hashes, sorted sets.

func (w *worker) sadd(ctx context.Context) error {
	return w.c.SAdd(ctx, w.key("set"), w.members(3)...).Err()
}

func (w *worker) srem(ctx context.Context) error {
	return w.c.SRem(ctx, w.key("set"), w.members(3)...).Err()
}

// Hash fields f<n> hold arbitrary values and n<n> integers, so HINCRBY
// never meets a non-integer field.
func (w *worker) hset(ctx context.Context) error {
	pairs := make([]any, 0, 6)
	for range 1 + w.rng.IntN(3) {
		pairs = append(pairs, fmt.Sprintf("f%d", w.rng.IntN(50)), w.value())
	}
	return w.c.HSet(ctx, w.key("hash"), pairs...).Err()
}

func (w *worker) hdel(ctx context.Context) error {
	field := fmt.Sprintf("f%d", w.rng.IntN(50))
	if w.rng.IntN(2) == 0 {
		field = fmt.Sprintf("n%d", w.rng.IntN(10))
	}
	return w.c.HDel(ctx, w.key("hash"), field).Err()
}

func (w *worker) hincrBy(ctx context.Context) error {
	return w.c.HIncrBy(ctx, w.key("hash"), fmt.Sprintf("n%d", w.rng.IntN(10)), int64(w.rng.IntN(100)-50)).Err()
}

func (w *worker) zadd(ctx context.Context) error {
	zs := make([]redis.Z, 1+w.rng.IntN(3))
	for i := range zs {
		zs[i] = redis.Z{Score: w.score(), Member: w.member()}
	}
	return w.c.ZAdd(ctx, w.key("zset"), zs...).Err()
}

func (w *worker) zincrBy(ctx context.Context) error {
	return w.c.ZIncrBy(ctx, w.key("zset"), w.score(), w.member()).Err()
}

func (w *worker) zrem(ctx context.Context) error {
	return w.c.ZRem(ctx, w.key("zset"), w.members(2)...).Err()
}

// Streams.

func (w *worker) xadd(ctx context.Context) error {
	return w.c.XAdd(ctx, &redis.XAddArgs{
		Stream: w.key("stream"),
		MaxLen: streamKeep,
		Approx: w.rng.IntN(2) == 0,
		Values: []any{"v", w.value(), "seq", w.seq},
	}).Err()
}

// streamGroup feeds one stream that has a consumer group and consumes it,
// so group state (last ID, pending entries, acks) must replicate too.
func (w *worker) streamGroup(ctx context.Context) error {
	if err := w.load.ensureGroup(ctx, w.c, w.db); err != nil {
		return err
	}
	err := w.c.XAdd(ctx, &redis.XAddArgs{
		Stream: groupStream, MaxLen: 2 * streamKeep, Approx: true,
		Values: []any{"v", w.smallValue()},
	}).Err()
	if err != nil {
		return err
	}
	streams, err := w.c.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: groupName, Consumer: fmt.Sprintf("c%d", w.id),
		Streams: []string{groupStream, ">"}, Count: 5, Block: -1,
	}).Result()
	if err != nil && strings.HasPrefix(err.Error(), "NOGROUP") {
		// The master came back without the stream (restart without save).
		w.load.forgetGroup(w.db)
		return nil
	}
	if err != nil {
		return err
	}
	var ids []string
	for _, s := range streams {
		for _, m := range s.Messages {
			ids = append(ids, m.ID)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	return w.c.XAck(ctx, groupStream, groupName, ids...).Err()
}

// Expiry.

// shortLived keys expire during the run, so the master's expiry DELs must
// reach the replicas for digests to converge.
func (w *worker) shortLived(ctx context.Context) error {
	return w.c.Set(ctx, w.key("tmp"), w.value(), w.shortTTL()).Err()
}

func (w *worker) pexpire(ctx context.Context) error {
	if w.rng.IntN(2) == 0 {
		return w.c.PExpire(ctx, w.key("tmp"), w.shortTTL()).Err()
	}
	return w.c.PExpire(ctx, w.key("str"), longTTL).Err()
}

// Transactions and scripts.

func (w *worker) multi(ctx context.Context) error {
	_, err := w.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Incr(ctx, w.key("cnt"))
		p.HSet(ctx, w.key("hash"), fmt.Sprintf("f%d", w.rng.IntN(50)), w.value())
		p.RPush(ctx, w.key("list"), w.value())
		p.SAdd(ctx, w.key("set"), w.member())
		p.ZAdd(ctx, w.key("zset"), redis.Z{Score: w.score(), Member: w.member()})
		p.Set(ctx, w.key("str"), w.value(), longTTL)
		return nil
	})
	return err
}

func (w *worker) eval(ctx context.Context) error {
	keys := []string{w.key("hash"), w.key("list"), w.key("str")}
	tag := fmt.Sprintf("w%d-%d", w.id, w.seq)
	return w.c.Eval(ctx, evalScript, keys, tag, listKeep).Err()
}

// Deletes.

func (w *worker) del(ctx context.Context) error {
	return w.c.Del(ctx, w.anyKey()).Err()
}

func (w *worker) unlink(ctx context.Context) error {
	return w.c.Unlink(ctx, w.anyKey(), w.anyKey()).Err()
}
