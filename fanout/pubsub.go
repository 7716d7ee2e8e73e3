package fanout

import (
	"sync"
	"time"

	"github.com/replproxy/replproxy/resp"
)

// hub is the little pub/sub Sentinel needs: sentinels subscribe to
// __sentinel__:hello on every instance they watch and publish their hello
// there, and that is how they find each other.
type hub struct {
	mu   sync.Mutex
	subs map[string]map[*client]struct{}
}

func (h *hub) subscribe(c *client, ch string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.subs == nil {
		h.subs = map[string]map[*client]struct{}{}
	}
	if h.subs[ch] == nil {
		h.subs[ch] = map[*client]struct{}{}
	}
	h.subs[ch][c] = struct{}{}
}

func (h *hub) unsubscribe(c *client, ch string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.subs[ch], c)
}

func (h *hub) publish(ch string, msg []byte) int {
	h.mu.Lock()
	subs := make([]*client, 0, len(h.subs[ch]))
	for c := range h.subs[ch] {
		subs = append(subs, c)
	}
	h.mu.Unlock()
	payload := resp.AppendArrayHeader(nil, 3)
	payload = resp.AppendBulkString(payload, "message")
	payload = resp.AppendBulkString(payload, ch)
	payload = resp.AppendBulk(payload, msg)
	// All at once, against one deadline: however many subscribers stall,
	// the publisher waits a second at most.
	deadline := time.Now().Add(pushTimeout)
	var wg sync.WaitGroup
	for _, c := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.deliver(payload, deadline)
		}()
	}
	wg.Wait()
	return len(subs)
}

// pushTimeout is the longest a PUBLISH waits for its subscribers.
const pushTimeout = time.Second

// deliver writes a pushed message by the deadline; a subscriber that does
// not take it by then is closed rather than allowed to hold publishers up.
// That includes the wait for the connection: the subscriber's own reply
// may be stuck in a write to it.
func (c *client) deliver(payload []byte, deadline time.Time) {
	wait := time.NewTimer(time.Until(deadline))
	defer wait.Stop()
	select {
	case c.wlock <- struct{}{}:
	case <-wait.C:
		c.conn.Close() // also ends the write that holds the lock
		return
	}
	defer func() { <-c.wlock }()
	c.conn.SetWriteDeadline(deadline)
	if _, err := c.conn.Write(payload); err != nil {
		c.conn.Close()
	}
}

func (c *client) subscribeCmd(args [][]byte) {
	for _, a := range args[1:] {
		ch := string(a)
		if _, ok := c.channels[ch]; !ok {
			c.channels[ch] = struct{}{}
			c.srv.hub.subscribe(c, ch)
		}
		c.out = appendSubReply(c.out, "subscribe", ch, len(c.channels))
	}
}

func (c *client) unsubscribeCmd(args [][]byte) {
	chans := make([]string, 0, len(args))
	for _, a := range args[1:] {
		chans = append(chans, string(a))
	}
	if len(chans) == 0 {
		for ch := range c.channels {
			chans = append(chans, ch)
		}
	}
	if len(chans) == 0 {
		// Subscribed to nothing: Redis still answers, with a nil channel,
		// and a client waiting for that answer would hang without it.
		c.out = resp.AppendArrayHeader(c.out, 3)
		c.out = resp.AppendBulkString(c.out, "unsubscribe")
		c.out = resp.AppendNullBulk(c.out)
		c.out = resp.AppendInt(c.out, 0)
		return
	}
	for _, ch := range chans {
		delete(c.channels, ch)
		c.srv.hub.unsubscribe(c, ch)
		c.out = appendSubReply(c.out, "unsubscribe", ch, len(c.channels))
	}
}

func appendSubReply(b []byte, kind, ch string, n int) []byte {
	b = resp.AppendArrayHeader(b, 3)
	b = resp.AppendBulkString(b, kind)
	b = resp.AppendBulkString(b, ch)
	return resp.AppendInt(b, int64(n))
}

func (c *client) publishCmd(args [][]byte) {
	if len(args) != 3 {
		c.wrongArgs("publish")
		return
	}
	c.out = resp.AppendInt(c.out, int64(c.srv.hub.publish(string(args[1]), args[2])))
}

func (c *client) leaveChannels() {
	for ch := range c.channels {
		c.srv.hub.unsubscribe(c, ch)
	}
}
