package fanout

import "strconv"

// LinkState is the upstream link's state. It lives here, not with the
// link, so that the downstream side can answer INFO and ROLE from it.
type LinkState uint8

// Link states, named as ROLE reports them.
const (
	LinkConnect    LinkState = iota // not connected; waiting to retry
	LinkConnecting                  // dialing
	LinkHandshake                   // PING, AUTH, REPLCONF, PSYNC
	LinkSync                        // receiving an RDB
	LinkConnected                   // streaming
	LinkStates                      // how many there are: range over it for all of them
)

// ReplicaState is a downstream replica's state.
type ReplicaState uint8

// Replica states, named as INFO reports them.
const (
	StateWaitBgsave ReplicaState = iota // waiting for a snapshot to serve
	StateSendBulk                       // sending the snapshot
	StateOnline                         // streaming the backlog
	ReplicaStates                       // how many there are: range over it for all of them
)

var (
	linkStateNames    = [LinkStates]string{"connect", "connecting", "handshake", "sync", "connected"}
	replicaStateNames = [ReplicaStates]string{"wait_bgsave", "send_bulk", "online"}
)

func (s LinkState) String() string { return stateName(linkStateNames[:], int(s)) }

func (s ReplicaState) String() string { return stateName(replicaStateNames[:], int(s)) }

func stateName(names []string, s int) string {
	if s < len(names) {
		return names[s]
	}
	return "state(" + strconv.Itoa(s) + ")"
}
