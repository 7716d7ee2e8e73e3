package proxy

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
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
}

func (c SentinelConfig) enabled() bool { return len(c.Addrs) > 0 }

// sentinelWatch keeps the link on the master Sentinel names: it subscribes
// to +switch-master on one sentinel after another, and polls them all.
type sentinelWatch struct {
	cfg  SentinelConfig
	link *Link
	log  zerolog.Logger
}

func (w *sentinelWatch) client(addr string) *redis.SentinelClient {
	return redis.NewSentinelClient(&redis.Options{
		Addr: addr, Username: w.cfg.User, Password: w.cfg.Password,
		DialTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second, MaxRetries: -1,
	})
}

// resolve asks each sentinel in turn for the master's address.
func (w *sentinelWatch) resolve(ctx context.Context) (string, error) {
	var errs []string
	for _, addr := range w.cfg.Addrs {
		c := w.client(addr)
		res, err := c.GetMasterAddrByName(ctx, w.cfg.Name).Result()
		c.Close()
		if err == nil && len(res) == 2 {
			return net.JoinHostPort(res[0], res[1]), nil
		}
		errs = append(errs, fmt.Sprintf("%s: %v", addr, err))
	}
	return "", fmt.Errorf("no sentinel named a master %q: %s", w.cfg.Name, strings.Join(errs, "; "))
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
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.follow(ctx)
	}()
	tick := time.NewTicker(time.Duration(w.cfg.Poll))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			<-done
			return
		case <-tick.C:
		}
		if addr, err := w.resolve(ctx); err == nil {
			w.link.Repoint(addr, "sentinel names a new master (poll)")
		}
	}
}

// follow listens for +switch-master, moving on to the next sentinel when
// one goes away.
func (w *sentinelWatch) follow(ctx context.Context) {
	for i := 0; ctx.Err() == nil; i++ {
		addr := w.cfg.Addrs[i%len(w.cfg.Addrs)]
		err := w.listen(ctx, addr)
		if ctx.Err() != nil {
			return
		}
		w.log.Warn().Err(err).Str("sentinel", addr).Msg("lost the sentinel's +switch-master feed; trying the next")
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
	sub := c.Subscribe(ctx, "+switch-master")
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
		// "<name> <old-ip> <old-port> <new-ip> <new-port>"
		f := strings.Fields(msg.Payload)
		if len(f) == 5 && f[0] == w.cfg.Name {
			w.link.Repoint(net.JoinHostPort(f[3], f[4]), "sentinel +switch-master from "+addr)
		}
	}
}
