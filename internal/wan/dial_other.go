//go:build !linux

package wan

import (
	"context"
	"net"
)

// Dialer fails: only Linux has network namespaces.
func Dialer(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(context.Context, string, string) (net.Conn, error) { return nil, ErrUnavailable }
}
