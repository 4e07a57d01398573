#!/usr/bin/env bash
# Instructions a cache hit costs, for two hangar-proxy builds side by side, counted by
# valgrind's callgrind: repeatable on a shared, noisy machine where req/s is not (user space
# only; the kernel's share, most of a large hit, is not counted).
#
#   bench/scripts/hit-instructions.sh BEFORE_BIN AFTER_BIN [SIZE...]
#
# For each size (bytes; default 1024 and 10485760) each build serves N, then 2N hits of one
# cached object under callgrind; (count(2N) - count(N)) / N is the per-hit figure, startup and
# shutdown cancelled out. Needs valgrind, python3 and curl.
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2,10p "$0"; exit 2; }
before=$1; after=$2; shift 2
sizes=("$@")
[ $# -gt 0 ] || sizes=(1024 10485760)
work=$(mktemp -d /tmp/hangar-hit-ir.XXXX)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/up/obj"
python3 -m http.server 0 --bind 127.0.0.1 --directory "$work/up" > "$work/up.log" 2>&1 &
upstream_pid=$!
for _ in $(seq 100); do grep -q "Serving HTTP" "$work/up.log" && break; sleep 0.1; done
port=$(grep -o 'port [0-9]*' "$work/up.log" | head -1 | cut -d' ' -f2)

# count BIN N: total instructions of a proxy that served N hits (plus its start and stop).
count() {
  local bin=$1 n=$2
  rm -rf "$work/cache" "$work/cg.out" "$work/ready"
  printf '[cache]\nmemory_max_object_bytes = "16MiB"\n[[repository]]\nname = "b"\nprefix = "/"\nupstream = "http://127.0.0.1:%s/"\n[repository.freshness]\nimmutable = ["/obj/**"]\n' "$port" > "$work/hangar.toml"
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$bin" --config "$work/hangar.toml" \
    --listen 127.0.0.1:0 --admin 127.0.0.1:0 --cache-dir "$work/cache" --log error > "$work/ready" 2>/dev/null &
  local pid=$!
  for _ in $(seq 600); do grep -q ready "$work/ready" 2>/dev/null && break; sleep 0.5; done
  local listen
  listen=$(grep -o 'listen=[0-9.:]*' "$work/ready" | cut -d= -f2)
  curl -s -o /dev/null "http://$listen/obj/hot"
  python3 - "$listen" "$n" <<'PY'
import http.client, sys
host, port = sys.argv[1].rsplit(":", 1)
c = http.client.HTTPConnection(host, int(port))
for _ in range(int(sys.argv[2])):
    c.request("GET", "/obj/hot"); r = c.getresponse(); r.read()
    assert r.status == 200 and r.getheader("x-hangar-cache") == "hit", (r.status, r.getheader("x-hangar-cache"))
PY
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  awk '/^summary:/ {print $2; exit}' "$work/cg.out"
}

printf '%10s  %14s  %14s  %7s\n' size before after ratio
for size in "${sizes[@]}"; do
  head -c "$size" /dev/urandom > "$work/up/obj/hot"
  n=$(( size > 100000 ? 20 : 2000 ))
  per_hit() { local a b; a=$(count "$1" "$n"); b=$(count "$1" $((2 * n))); echo $(( (b - a) / n )); }
  b=$(per_hit "$before"); a=$(per_hit "$after")
  printf '%10s  %14s  %14s  %6sx\n' "$size" "$b" "$a" "$(python3 -c "print(f'{$a / $b:.3f}')")"
done
