package redisproc

import (
	"os"
	"path/filepath"
	"strings"
)

// Binary is one server build.
type Binary struct {
	Path string // redis-server or valkey-server
	// NoDebugFlag is for Redis before 7.0: DEBUG is always on there, and
	// --enable-debug-command is an unknown option that stops the start.
	NoDebugFlag bool
}

// VersionsDir is where `make compat` builds the servers of
// ../shared/redis-versions: $REPLPROXY_VERSIONS_DIR, or
// ~/.cache/replproxy/redis-versions, outside any checkout so that every
// worktree and CI run shares one build.
func VersionsDir() string {
	if d := os.Getenv("REPLPROXY_VERSIONS_DIR"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "replproxy", "redis-versions")
	}
	return filepath.Join(os.TempDir(), "replproxy-redis-versions")
}

// Built returns the server binary of a build in VersionsDir, named as its
// source archive unpacks ("redis-6.2.16", "valkey-8.0.1"). It fails the
// test when the build is missing: `make compat` builds it.
func Built(t TB, name string) Binary {
	t.Helper()
	server := "redis-server"
	if strings.HasPrefix(name, "valkey-") {
		server = "valkey-server"
	}
	path := filepath.Join(VersionsDir(), name, "src", server)
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("redisproc: no %s build at %s (run make compat): %v", name, path, err)
	}
	return Binary{Path: path, NoDebugFlag: strings.HasPrefix(name, "redis-6.")}
}
