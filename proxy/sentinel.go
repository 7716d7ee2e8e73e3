package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/internal/periodic"
	"github.com/replproxy/replproxy/upstream"
)

// SentinelConfig makes the proxy follow the master Sentinel names.
type SentinelConfig struct {
	Addrs    []string `yaml:"addrs"`
	Name     string   `yaml:"name"`
	User     string   `yaml:"user"`
	Password string   `yaml:"password"`
	// PasswordFile reads Password from a file (a mounted secret).
	PasswordFile string `yaml:"password_file"`
	// Poll is how often the master is asked for, should a +switch-master
	// message be missed.
	Poll Duration `yaml:"poll"`
	// FailoverPause bounds how long the link stays off the old master once
	// a sentinel has selected the replica to promote, waiting for
	// +promoted-slave or an abort; 0 turns the pause off.
	FailoverPause Duration `yaml:"failover_pause"`
}

func (c SentinelConfig) enabled() bool { return len(c.Addrs) > 0 }

// sentinelWatch keeps the link on the master Sentinel names. It listens
// to every sentinel at once, since only the one leading a failover
// publishes its steps, and polls them all.
//
// A planned failover (SENTINEL FAILOVER) leaves the old master running:
// until it is reconfigured it streams Sentinel's hello PUBLISHes and its
// own PINGs, which the promoted replica never gets. Each one the proxy
// takes puts it past the promoted replica's second_repl_offset, and PSYNC
// then fails. So when the leader selects the replica to promote, the link
// is parked (no byte more is read from the old master); Sentinel sends
// SLAVEOF NO ONE one timer tick later (50-100 ms), so the replica has
// then received all the proxy has. At +promoted-slave the link PSYNCs the
// new master, and after an abort it resumes from the old one.
type sentinelWatch struct {
	cfg  SentinelConfig
	link *upstream.Link
	log  zerolog.Logger

	mu         sync.Mutex
	gen        uint64    // counts failover events: a poll begun before one is stale
	failoverAt time.Time // a failover of the master is under way since; zero: none
	leader     string    // the sentinel that published the failover's last step; "": none
}

// failoverGuard is how long after a failover began polls are ignored
// unless +switch-master or an abort ends it first: until then every
// sentinel still names the old master. Sentinel's default failover-timeout.
const failoverGuard = 3 * time.Minute

// sentinelChannels are the events the watcher follows.
var sentinelChannels = []string{
	"+switch-master", "+selected-slave", "+failover-state-send-slaveof-noone", "+promoted-slave",
	"-failover-abort-not-elected", "-failover-abort-no-good-slave", "-failover-abort-slave-timeout",
}

func (w *sentinelWatch) client(addr string) *redis.SentinelClient {
	return redis.NewSentinelClient(&redis.Options{
		Addr: addr, Username: w.cfg.User, Password: w.cfg.Password,
		DialTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second, MaxRetries: -1,
	})
}

// named is one sentinel's answer: the master's address and its
// configuration epoch.
type named struct {
	addr  string
	epoch int64
	err   error
}

// resolve asks every sentinel at once for the master, and takes the answer
// with the highest configuration epoch: for a while after a failover,
// sentinels that have not heard of it yet still name the old master. The
// leader of a failover is not asked: from the promotion to the end of the
// failover it names the old master with the new epoch, while the others,
// told by its hello, already name the new one.
func (w *sentinelWatch) resolve(ctx context.Context) (string, error) {
	answers := make([]named, len(w.cfg.Addrs))
	var wg sync.WaitGroup
	for i, addr := range w.cfg.Addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i] = w.ask(ctx, addr)
		}()
	}
	wg.Wait()
	best := -1
	var errs []string
	for i, a := range answers {
		if a.err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", w.cfg.Addrs[i], a.err))
			continue
		}
		if best < 0 || a.epoch > answers[best].epoch {
			best = i
		}
	}
	if best < 0 {
		return "", fmt.Errorf("no sentinel named a master %q: %s", w.cfg.Name, strings.Join(errs, "; "))
	}
	return answers[best].addr, nil
}

func (w *sentinelWatch) ask(ctx context.Context, addr string) named {
	c := w.client(addr)
	defer c.Close()
	f, err := c.Master(ctx, w.cfg.Name).Result()
	var rerr redis.Error
	if errors.As(err, &rerr) {
		// An ACL that allows only GET-MASTER-ADDR-BY-NAME: no epoch to
		// compare, and no sign of a failover under way.
		res, aerr := c.GetMasterAddrByName(ctx, w.cfg.Name).Result()
		if aerr != nil || len(res) != 2 {
			return named{err: fmt.Errorf("SENTINEL MASTER: %w; GET-MASTER-ADDR-BY-NAME: %v", err, aerr)}
		}
		return named{addr: net.JoinHostPort(res[0], res[1])}
	}
	if err != nil {
		return named{err: err}
	}
	if strings.Contains(f["flags"], "failover_in_progress") {
		// The leader names the old master until the failover ends, with
		// the failover's epoch already: the others have switched by then.
		return named{err: errors.New("leading a failover of the master")}
	}
	if f["ip"] == "" || f["port"] == "" {
		return named{err: fmt.Errorf("SENTINEL MASTER %s has no address", w.cfg.Name)}
	}
	epoch, _ := strconv.ParseInt(f["config-epoch"], 10, 64)
	return named{addr: net.JoinHostPort(f["ip"], f["port"]), epoch: epoch}
}

// resolveUntil blocks until a sentinel names the master or ctx ends.
func (w *sentinelWatch) resolveUntil(ctx context.Context) (string, error) {
	for {
		addr, err := w.resolve(ctx)
		if err == nil {
			w.log.Info().Str("master", addr).Str("name", w.cfg.Name).Msg("sentinel named the master")
			return addr, nil
		}
		w.log.Warn().Err(err).Msg("waiting for a sentinel to name the master")
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

func (w *sentinelWatch) run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, addr := range w.cfg.Addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.follow(ctx, addr)
		}()
	}
	defer wg.Wait()
	periodic.Run(ctx, time.Duration(w.cfg.Poll), nil, func(time.Time) {
		gen := w.generation()
		if addr, err := w.resolve(ctx); err == nil && w.pollMayRepoint(gen) {
			w.link.Repoint(addr, "sentinel names a new master (poll)")
		}
	})
}

func (w *sentinelWatch) generation() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.gen
}

// pollMayRepoint says whether a poll's answer may be acted on: not when a
// failover event came while it asked (its answer predates the event), nor
// while a failover is under way (every sentinel still names the old master).
func (w *sentinelWatch) pollMayRepoint(gen uint64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.gen != gen {
		return false
	}
	return w.failoverAt.IsZero() || time.Since(w.failoverAt) > failoverGuard
}

// noteFailover records a failover event from the sentinel at from; begun
// says whether a failover is under way after it.
func (w *sentinelWatch) noteFailover(begun bool, from string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.gen++
	switch {
	case !begun:
		w.failoverAt, w.leader = time.Time{}, ""
	case w.failoverAt.IsZero():
		w.failoverAt, w.leader = time.Now(), from
	default:
		w.leader = from
	}
}

// abortEnds says whether an abort from the sentinel at from ends the
// failover under way, and if so records that it did. Only the leader's
// does: a sentinel that lost the election for the same failover publishes
// -failover-abort-not-elected when its own election times out, up to 10 s
// later, while the leader may still be waiting for the promotion.
func (w *sentinelWatch) abortEnds(from string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.leader != "" && w.leader != from {
		return false
	}
	w.gen++
	w.failoverAt, w.leader = time.Time{}, ""
	return true
}

// follow listens to one sentinel's events until ctx ends, reconnecting
// when it goes away.
func (w *sentinelWatch) follow(ctx context.Context, addr string) {
	for ctx.Err() == nil {
		err := w.listen(ctx, addr)
		if ctx.Err() != nil {
			return
		}
		w.log.Warn().Err(err).Str("sentinel", addr).Msg("lost the sentinel's event feed; reconnecting")
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (w *sentinelWatch) listen(ctx context.Context, addr string) error {
	c := w.client(addr)
	defer c.Close()
	sub := c.Subscribe(ctx, sentinelChannels...)
	defer sub.Close()
	// A blocked receive does not watch ctx; closing the subscription ends it.
	stop := context.AfterFunc(ctx, func() { sub.Close() })
	defer stop()
	if _, err := sub.Receive(ctx); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	for {
		msg, err := sub.ReceiveMessage(ctx)
		if err != nil {
			return err
		}
		w.event(msg.Channel, msg.Payload, addr)
	}
}

// sentinelInstance is an event's subject: "<type> <name> <ip> <port>",
// followed for a replica by "@ <master-name> <master-ip> <master-port>".
type sentinelInstance struct {
	kind, addr           string
	masterName, masterAt string
}

func parseSentinelInstance(payload string) (sentinelInstance, bool) {
	f := strings.Fields(payload)
	switch {
	case len(f) >= 4 && f[0] == "master":
		a := net.JoinHostPort(f[2], f[3])
		return sentinelInstance{kind: f[0], addr: a, masterName: f[1], masterAt: a}, true
	case len(f) >= 8 && f[4] == "@":
		return sentinelInstance{kind: f[0], addr: net.JoinHostPort(f[2], f[3]), masterName: f[5], masterAt: net.JoinHostPort(f[6], f[7])}, true
	}
	return sentinelInstance{}, false
}

// event acts on one message from the sentinel at from.
func (w *sentinelWatch) event(channel, payload, from string) {
	if channel == "+switch-master" {
		// "<name> <old-ip> <old-port> <new-ip> <new-port>"
		f := strings.Fields(payload)
		if len(f) != 5 || f[0] != w.cfg.Name {
			return
		}
		if w.otherThanParked(channel, net.JoinHostPort(f[1], f[2]), from) {
			return
		}
		w.noteFailover(false, from)
		w.link.Failover.Switched(time.Now())
		w.link.Repoint(net.JoinHostPort(f[3], f[4]), "sentinel +switch-master from "+from)
		w.link.Unpark("sentinel +switch-master from " + from)
		return
	}
	in, ok := parseSentinelInstance(payload)
	if !ok || in.masterName != w.cfg.Name {
		return
	}
	switch {
	case channel == "+selected-slave" || channel == "+failover-state-send-slaveof-noone":
		w.noteFailover(true, from)
		if w.cfg.FailoverPause <= 0 || in.masterAt != w.link.Addr() {
			return
		}
		w.link.Park(time.Now().Add(time.Duration(w.cfg.FailoverPause)),
			fmt.Sprintf("sentinel %s selected %s to replace %s", from, in.addr, in.masterAt))
	case channel == "+promoted-slave":
		if w.otherThanParked(channel, in.masterAt, from) {
			return
		}
		w.noteFailover(true, from)
		w.link.Failover.Promoted(time.Now())
		w.link.Repoint(in.addr, "sentinel +promoted-slave from "+from)
		w.link.Unpark("sentinel +promoted-slave from " + from)
	case strings.HasPrefix(channel, "-failover-abort-"):
		if !w.abortEnds(from) {
			w.log.Info().Str("sentinel", from).Str("event", channel).Msg("abort of an attempt that did not lead the failover under way; the failover goes on")
			return
		}
		w.log.Warn().Str("sentinel", from).Str("event", channel).Str("master", in.addr).Msg("sentinel aborted the failover; resuming from the master")
		w.link.Unpark("sentinel " + channel + " from " + from)
	}
}

// otherThanParked says whether an event that would end a park is about a
// failover of another master than the one the link is parked on: an
// earlier failover's, told late (a sentinel that learned of it by hello,
// or a feed that lagged). Acting on it would resume reading the master
// whose failover is under way.
func (w *sentinelWatch) otherThanParked(channel, master, from string) bool {
	on, parked := w.link.ParkedOn()
	if !parked || master == on {
		return false
	}
	w.log.Info().Str("sentinel", from).Str("event", channel).Str("master", master).Str("parked_on", on).
		Msg("event of an earlier failover ignored; the failover under way goes on")
	return true
}
