// Package fanout is the proxy's downstream side: it speaks the master half of
// the Redis replication protocol and runs one sender per replica, each with
// its own cursor into the backlog.
package fanout

import (
	"context"
	"errors"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/rdbconvert"
)

// LinkStatus describes the upstream link for INFO and ROLE.
type LinkStatus struct {
	MasterHost string
	MasterPort int
	State      LinkState
	LastIO     time.Time // last byte from the master
	DownSince  time.Time // zero while the link is up
	SyncBytes  int64     // RDB bytes received so far while State is sync
	SyncTotal  int64     // the RDB's size, -1 while unknown (a diskless $EOF transfer)
}

// Upstream is what the downstream side needs of the upstream link: its
// status, and moving it (REPLICAOF) to another master.
type Upstream interface {
	LinkStatus() LinkStatus
	Repoint(addr, why string) bool
}

// Config holds what the Server needs, taken as given (the proxy's
// configuration has its defaults), but for holdAhead and chunkBytes.
type Config struct {
	Store    *backlog.Store
	Upstream Upstream
	// Users may AUTH; with none, every client is the unrestricted default
	// user, and ProtectedMode limits them to loopback.
	Users         []User
	ProtectedMode bool
	// MaxClients caps connections (Redis' maxclients); AuthTimeout closes
	// a connection that has not authenticated by then.
	MaxClients  int
	AuthTimeout time.Duration
	// MultiMaxCommands and MultiMaxBytes cap one client's MULTI queue.
	MultiMaxCommands int
	MultiMaxBytes    int
	Logger           zerolog.Logger
	Version          string
	RunID            string
	Port             int           // announced in INFO server
	ReplTimeout      time.Duration // a replica that accepts no byte for this long is dropped
	// holdAhead is how long a PSYNC for an offset the proxy has not yet
	// received (same history, e.g. after a proxy crash) waits for the
	// upstream to catch up before it falls back to a full sync.
	// chunkBytes bounds one send, so that a sender notices cancellation.
	// Only tests set them; zero takes the default.
	holdAhead  time.Duration
	chunkBytes int64
	// MaxLagBytes and MaxLag drop an online replica that falls this
	// far behind (0: no limit); it comes back partially if it still can.
	MaxLagBytes int64
	MaxLag      time.Duration
	// MaxConcurrentFullSyncs queues further full syncs (0: no limit).
	MaxConcurrentFullSyncs int
	// RateLimit caps each replica's stream in bytes per second (0: none).
	RateLimit int64
	// Codecs are the compression codecs offered to downstream replproxies
	// that ask (nil: AllCodecs; empty: none).
	Codecs []string
	// BacklogMaxBytes and Fsync are reported by INFO.
	BacklogMaxBytes int64
	Fsync           string
	// ExtraStats adds the upstream link's counters to INFO stats.
	ExtraStats func() []KV
	// NeedSnapshot asks for a snapshot at offset minOffset or later, when
	// the stored one can no longer be continued from the backlog or a
	// downstream replproxy asked for a newer one.
	NeedSnapshot func(minOffset int64)
	// ProxyInfo fills INFO's proxy section: ages, last ACK and progress.
	ProxyInfo func() []KV

	// UnauthMaxMemory bounds the query buffers of all unauthenticated
	// clients together; past it the largest are closed.
	UnauthMaxMemory int64
	// RDBFormat is what replicas that announce no version load (zero:
	// whatever the master writes); a snapshot they cannot load is
	// converted into ConvertDir. RDBConvertLossy converts data the target
	// cannot hold with the loss counted, instead of refusing.
	RDBFormat rdbconvert.Format
	// UserRDBFormats overrides RDBFormat for the replicas of a user.
	UserRDBFormats  map[string]rdbconvert.Format
	RDBConvertLossy bool
	ConvertDir      string
	// ConvertRate caps a conversion's reading of the snapshot, in bytes
	// per second (0: none).
	ConvertRate int64
}

func (c *Config) setDefaults() {
	if c.holdAhead == 0 {
		c.holdAhead = 10 * time.Second
	}
	if c.chunkBytes == 0 {
		c.chunkBytes = 4 << 20
	}
}

// Stats are the counters INFO stats reports.
type Stats struct {
	SyncFull       atomic.Int64
	SyncPartialOK  atomic.Int64
	SyncPartialErr atomic.Int64
	SyncFullPaced  atomic.Int64 // full syncs held back after a replica failed one
	Connections    atomic.Int64
	Commands       atomic.Int64 // commands received, refused ones included
	Rejected       atomic.Int64
	CompressedRaw  atomic.Int64 // stream bytes sent compressed to downstream replproxies
	CompressedWire atomic.Int64 // what they took on the wire
	SentFromMemory atomic.Int64 // stream bytes sent from the last append, in memory
	SentFromDisk   atomic.Int64 // stream bytes sent from the backlog files

	AuthFailures    atomic.Int64 // wrong AUTH
	PermDenied      atomic.Int64 // -NOPERM
	RejectedConns   atomic.Int64 // over maxclients
	ProtectedDenied atomic.Int64 // -DENIED by protected mode
	AuthTimeouts    atomic.Int64 // closed for not authenticating in time
	EvictedClients  atomic.Int64 // unauthenticated, closed to keep their buffers within budget
}

// DefaultUnauthMaxMemory is room for about 25 unauthenticated clients
// at their largest (10 arguments of 16 KiB), and for many thousands that
// send only an AUTH.
const DefaultUnauthMaxMemory = 4 << 20

// Server accepts downstream connections: replicas, operators, Sentinel.
type Server struct {
	cfg     Config
	log     zerolog.Logger
	started time.Time
	stats   Stats

	mu       sync.Mutex
	replicas map[int64]*replica
	clients  int
	conns    connRegistry
	nextID   int64
	departed int64 // bytes sent to replicas that have detached

	ackMu      sync.Mutex
	ackChanged chan struct{}

	fullSyncSlots chan struct{} // nil: no limit on concurrent full syncs
	pacer         *pacer
	hub           hub

	users     map[string]*User
	authFails failureLog
	unauth    *unauthBudget
	cluster   clusterHooks

	// snapshotBufs hold one chunk of an RDB on its way to a replica.
	snapshotBufs sync.Pool
	conv         *converter // nil without ConvertDir
	convStats    ConvertStats
}

// New returns a Server; Serve runs it.
func New(cfg Config) *Server {
	cfg.setDefaults()
	s := &Server{cfg: cfg, log: cfg.Logger, started: time.Now(), replicas: map[int64]*replica{}, ackChanged: make(chan struct{}), pacer: newPacer(),
		unauth: newUnauthBudget(cfg.UnauthMaxMemory)}
	s.snapshotBufs.New = func() any { b := make([]byte, 256<<10); return &b }
	s.users = make(map[string]*User, len(cfg.Users))
	for _, u := range cfg.Users {
		s.users[u.Name] = &u
	}
	if cfg.ConvertDir != "" {
		s.conv = newConverter(cfg.ConvertDir, cfg.RDBConvertLossy, cfg.ConvertRate, cfg.Logger, &s.convStats)
	}
	if cfg.MaxConcurrentFullSyncs > 0 {
		s.fullSyncSlots = make(chan struct{}, cfg.MaxConcurrentFullSyncs)
	}
	return s
}

// SetUpstream connects the server to the upstream side it reports on and
// asks for snapshots; the two are built in turn as each refers to the other.
func (s *Server) SetUpstream(up Upstream, extraStats func() []KV, needSnapshot func(minOffset int64)) {
	s.cfg.Upstream = up
	s.cfg.ExtraStats = extraStats
	s.cfg.NeedSnapshot = needSnapshot
}

// Stats exposes the counters.
func (s *Server) Stats() *Stats { return &s.stats }

// Serve accepts on ln until ctx ends; it then closes every connection and
// waits for their goroutines.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.conv != nil {
		// After the replicas' goroutines: the last to leave a
		// conversion cancels it.
		defer s.conv.running.Wait()
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.enforceLag(ctx)
	}()
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of file descriptors and the like pass: keep serving the
			// replicas already attached, and accept again after a pause.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Error().Err(err).Dur("retry_in", delay).Msg("accept failed")
			time.Sleep(delay)
			continue
		}
		delay = 0
		s.stats.Connections.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveConn(ctx, conn)
		}()
	}
}

func (s *Server) addReplica(r *replica) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextID++
	r.id = s.nextID
	s.replicas[r.id] = r
}

func (s *Server) removeReplica(r *replica) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.replicas, r.id)
	s.departed += r.sentBytes.Load()
}

// BytesSent is every RDB and stream byte sent to replicas so far.
func (s *Server) BytesSent() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.departed
	for _, r := range s.replicas {
		n += r.sentBytes.Load()
	}
	return n
}

// SetProxyInfo installs what INFO's proxy section reports.
func (s *Server) SetProxyInfo(f func() []KV) { s.cfg.ProxyInfo = f }

// Replicas returns the attached replicas in attach order.
func (s *Server) Replicas() []ReplicaInfo {
	rs := s.replicaList()
	sort.Slice(rs, func(i, j int) bool { return rs[i].id < rs[j].id })
	out := make([]ReplicaInfo, len(rs))
	for i, r := range rs {
		out[i] = r.info()
	}
	return out
}

// DropAll disconnects every replica, as Redis does when its replication ID
// changes: they reconnect and PSYNC again, partially where the IDs allow.
func (s *Server) DropAll(reason string) {
	for _, r := range s.replicaList() {
		r.drop(reason)
	}
}

func (s *Server) clientCount(delta int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clients += delta
	return s.clients
}
