package fanout

import "time"

// newTestServer is New with the limits config.yaml defaults to, for those
// a test leaves at zero: New takes limits as given.
func newTestServer(cfg Config) *Server {
	if cfg.ReplTimeout == 0 {
		cfg.ReplTimeout = time.Minute
	}
	if cfg.AuthTimeout == 0 {
		cfg.AuthTimeout = 10 * time.Second
	}
	if cfg.MaxClients == 0 {
		cfg.MaxClients = 10000
	}
	if cfg.MultiMaxCommands == 0 {
		cfg.MultiMaxCommands = 1000
	}
	if cfg.MultiMaxBytes == 0 {
		cfg.MultiMaxBytes = 1 << 20
	}
	if cfg.UnauthMaxMemory == 0 {
		cfg.UnauthMaxMemory = DefaultUnauthMaxMemory
	}
	return New(cfg)
}
