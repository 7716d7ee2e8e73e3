#!/usr/bin/env bash
# make compat: build the Redis and Valkey releases of the version matrix
# from their source archives, once, into a cache outside the checkout that
# every worktree and CI run shares. Builds only what is missing.
#
#   REDIS_VERSIONS_SRC      the archives (default: ../shared/redis-versions)
#   REPLPROXY_VERSIONS_DIR  the cache (default: ~/.cache/replproxy/redis-versions)
set -euo pipefail
cd "$(dirname "$0")/.."

src=${REDIS_VERSIONS_SRC:-../shared/redis-versions}
cache=${REPLPROXY_VERSIONS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/replproxy/redis-versions}
versions=(redis-6.2.16 redis-7.2.6 redis-7.4.1 valkey-8.0.1)

mkdir -p "$cache"
# Two worktrees running make compat at once must not build into the same
# tree; the second waits and then finds the work done.
exec 9>"$cache/.lock"
flock 9

server_of() {
  case $1 in
    valkey-*) echo "$cache/$1/src/valkey-server" ;;
    *) echo "$cache/$1/src/redis-server" ;;
  esac
}

for v in "${versions[@]}"; do
  if [ -x "$(server_of "$v")" ]; then
    echo "compat: $v already built in $cache"
    continue
  fi
  archive="$src/$v.tar.gz"
  if [ ! -f "$archive" ]; then
    echo "compat: no build of $v in $cache and no source archive $archive" >&2
    echo "compat: set REDIS_VERSIONS_SRC to the directory holding $v.tar.gz" >&2
    exit 1
  fi
  echo "compat: building $v (2 to 4 minutes; log in $cache/$v.build.log)"
  rm -rf "${cache:?}/$v"
  tar -xzf "$archive" -C "$cache"
  rc=0
  make -C "$cache/$v" -j"$(nproc)" MALLOC=libc BUILD_TLS=no >"$cache/$v.build.log" 2>&1 || rc=$?
  echo "$v rc=$rc" >>"$cache/builds.done"
  if [ "$rc" -ne 0 ] || [ ! -x "$(server_of "$v")" ]; then
    echo "compat: building $v failed (rc=$rc); the end of $cache/$v.build.log:" >&2
    tail -n 20 "$cache/$v.build.log" >&2
    exit 1
  fi
done
