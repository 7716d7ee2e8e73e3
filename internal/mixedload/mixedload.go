// Package mixedload makes a seeded mix of writes shaped like an
// application's, rather than big repeated values that zstd would shrink to
// nothing and so flatter the compression figures. The compress scenario
// sends it to a master; the fanout zstd benchmark compresses the same
// bytes, so both measure one stream.
//
//	50% SET user:<id> of a JSON record whose fields vary
//	20% HSET session:<id> with five fields
//	20% INCR / INCRBY on counters
//	10% SET blob:<id> of 64..1024 random bytes, which do not compress
package mixedload

import (
	"fmt"
	"math/rand"
	"strconv"
	"strings"

	"github.com/replproxy/replproxy/resp"
)

var (
	first  = []string{"Ana", "Bruno", "Chen", "Dara", "Elif", "Femi", "Greta", "Hiro", "Ines", "Jonas", "Kemal", "Lea", "Mateo", "Nia", "Omar", "Priya"}
	last   = []string{"Silva", "Novak", "Okafor", "Tanaka", "Müller", "Haddad", "Kowalski", "Rossi", "Larsen", "Nguyen", "García", "Ivanova"}
	cities = []string{"Lisbon", "Osaka", "Lagos", "Berlin", "Austin", "Krakow", "Lyon", "Pune", "Quito", "Tallinn"}
	tags   = []string{"beta", "vip", "churn-risk", "newsletter", "mobile", "desktop", "trial", "annual", "eu", "us"}
	agents = []string{
		"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
		"Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
		"Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0",
		"okhttp/4.12.0",
	}
	pages = []string{"/", "/cart", "/checkout", "/search", "/account", "/orders", "/help", "/product"}
)

// Gen yields the commands, the same ones for every Gen made with the same
// start time. It is not safe for concurrent use.
type Gen struct {
	rng  *rand.Rand
	now  int64
	i    int
	sb   strings.Builder
	blob []byte
	json bool // only the JSON records
}

// New starts the sequence; now (Unix seconds) stamps the records, and
// advances by one second every thousand commands.
func New(now int64) *Gen {
	return &Gen{rng: rand.New(rand.NewSource(7)), now: now, blob: make([]byte, 1024)}
}

// NewJSON is New restricted to the JSON records (SET user:<id>): the
// JSON-like values of the WAN test and scenario.
func NewJSON(now int64) *Gen {
	g := New(now)
	g.json = true
	return g
}

// Append appends the next command, RESP-encoded, to dst; random is how
// many of its bytes are random binary.
func (g *Gen) Append(dst []byte) (out []byte, random int) {
	rng := g.rng
	ts := strconv.FormatInt(g.now+int64(g.i/1000), 10)
	g.i++
	p := rng.Intn(10)
	if g.json {
		p = 0
	}
	switch {
	case p < 5:
		id := rng.Intn(100000)
		sb := &g.sb
		sb.Reset()
		fmt.Fprintf(sb, `{"id":%d,"name":"%s %s","email":"%s.%s%d@example.com","age":%d,"city":"%s","score":%.3f,"active":%t,"created":%s,"tags":[`,
			id, first[rng.Intn(len(first))], last[rng.Intn(len(last))], strings.ToLower(first[rng.Intn(len(first))]),
			strings.ToLower(last[rng.Intn(len(last))]), rng.Intn(100), 18+rng.Intn(60), cities[rng.Intn(len(cities))],
			rng.Float64()*1000, rng.Intn(4) > 0, ts)
		for t := rng.Intn(4); t >= 0; t-- {
			fmt.Fprintf(sb, `"%s"`, tags[rng.Intn(len(tags))])
			if t > 0 {
				sb.WriteByte(',')
			}
		}
		fmt.Fprintf(sb, `],"visits":%d,"balance":"%d.%02d"}`, rng.Intn(5000), rng.Intn(100000), rng.Intn(100))
		return g.command(dst, "SET", "user:"+strconv.Itoa(id), sb.String()), 0
	case p < 7:
		return g.command(dst, "HSET", "session:"+strconv.FormatInt(rng.Int63n(1<<40), 36),
			"user", strconv.Itoa(rng.Intn(100000)),
			"ip", fmt.Sprintf("10.%d.%d.%d", rng.Intn(256), rng.Intn(256), rng.Intn(256)),
			"ua", agents[rng.Intn(len(agents))],
			"last_seen", ts,
			"page", pages[rng.Intn(len(pages))]+"?ref="+strconv.Itoa(rng.Intn(1000))), 0
	case p < 9:
		key := "counter:" + pages[rng.Intn(len(pages))] + ":" + strconv.Itoa(rng.Intn(500))
		if rng.Intn(2) == 0 {
			return g.command(dst, "INCR", key), 0
		}
		return g.command(dst, "INCRBY", key, strconv.Itoa(1+rng.Intn(100))), 0
	default:
		b := g.blob[:64+rng.Intn(len(g.blob)-64)]
		rng.Read(b)
		return g.command(dst, "SET", "blob:"+strconv.Itoa(rng.Intn(10000)), string(b)), len(b)
	}
}

func (g *Gen) command(dst []byte, args ...string) []byte {
	dst = resp.AppendArrayHeader(dst, len(args))
	for _, a := range args {
		dst = resp.AppendBulkString(dst, a)
	}
	return dst
}
