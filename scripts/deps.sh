#!/usr/bin/env bash
# make deps: install the Redis tools the tests and the demo run, when any is
# missing. Quiet and quick when everything is present.
set -euo pipefail

declare -A pkg_of=(
  [redis-server]=redis-server
  [redis-cli]=redis-tools
  [redis-benchmark]=redis-tools
  [redis-sentinel]=redis-sentinel
)
need=()
for tool in redis-server redis-cli redis-benchmark redis-sentinel; do
  command -v "$tool" >/dev/null 2>&1 && continue
  p=${pkg_of[$tool]}
  [[ " ${need[*]-} " == *" $p "* ]] || need+=("$p")
done
if [ ${#need[@]} -eq 0 ]; then echo "deps: nothing to do"; exit 0; fi

if [ "$(id -u)" -eq 0 ]; then
  apt=(apt-get)
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  apt=(sudo -n apt-get)
else
  echo "missing Debian packages: ${need[*]}" >&2
  echo "install them with: sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi

# Were the packaged services running before? The install starts them; stop
# only what this script started, never a developer's own server.
was_running() { pgrep -x "$1" >/dev/null 2>&1; }
before_server=0 before_sentinel=0
was_running redis-server && before_server=1
was_running redis-sentinel && before_sentinel=1

echo "deps: installing ${need[*]} (the tests and the demo run real Redis servers)"
export DEBIAN_FRONTEND=noninteractive
"${apt[@]}" update -qq
"${apt[@]}" install -y -qq "${need[@]}" >/dev/null

# The tests start their own servers on free ports; the packaged ones only
# cost memory.
if command -v service >/dev/null 2>&1; then
  [ $before_server -eq 0 ] && { service redis-server stop >/dev/null 2>&1 || true; }
  [ $before_sentinel -eq 0 ] && { service redis-sentinel stop >/dev/null 2>&1 || true; }
fi
echo "deps: installed $(redis-server --version | cut -d' ' -f1-3)"
