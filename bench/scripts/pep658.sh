#!/usr/bin/env bash
# What deriving wheel metadata (PEP 658, `derive_files`) saves warm resolvers, side by side:
# two hangar-proxy processes over one index that publishes no metadata files (as many private
# indexes, devpi and older mirrors do), one with `derive_files = true`, one with `false`, both
# holding every wheel. Each round times `uv pip compile` and `pip install --dry-run` (no
# client cache) against each and counts the requests and bytes the proxy served them.
#
#   [RTT_MS=20] bench/scripts/pep658.sh PROXY_BIN [ROUNDS] [REQUIREMENT...]
#
# RTT_MS puts a relay that delays each direction by half of it between the clients and the
# proxies (a client in another zone or region; the kernel here has no netem). PIP_PYTHON is
# the interpreter whose pip is timed (default python3).
# The wheels are downloaded once from the index pip is configured with (needs network).
# Prints medians over ROUNDS (default 5) and the spread; the machine is shared and noisy,
# so read the ratios. Needs python3 with pip, uv and curl.
set -euo pipefail
[ $# -ge 1 ] || { sed -n 2,15p "$0"; exit 2; }
rtt_ms=${RTT_MS:-0} pip_python=${PIP_PYTHON:-python3}
bin=$1; rounds=${2:-5}; shift $(( $# >= 2 ? 2 : 1 ))
reqs=("$@")
[ ${#reqs[@]} -gt 0 ] || reqs=(pandas==2.2.3 scipy==1.14.1 matplotlib==3.9.2 scikit-learn==1.5.2 requests==2.32.3)
work=$(mktemp -d /tmp/hangar-pep658.XXXX)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
unset PIP_FIND_LINKS
export PIP_DISABLE_PIP_VERSION_CHECK=1

# The fixture index: the requirements' wheels (and their dependencies') for this machine,
# under files/, and a PEP 503 page per project linking them with their sha256 and nothing else.
live=$(python3 -c 'from pip._internal.models.index import PyPI; print(PyPI.simple_url)')
python3 -m pip download -q --only-binary :all: --index-url "$live" -d "$work/up/files" "${reqs[@]}"
python3 - "$work/up" <<'PY'
import hashlib, os, re, sys, collections
root = sys.argv[1]
projects = collections.defaultdict(list)
for f in sorted(os.listdir(f"{root}/files")):
    name = re.sub(r"[-_.]+", "-", f.split("-")[0]).lower()
    sha = hashlib.sha256(open(f"{root}/files/{f}", "rb").read()).hexdigest()
    projects[name].append(f'<a href="../../files/{f}#sha256={sha}">{f}</a><br/>')
for name, links in projects.items():
    os.makedirs(f"{root}/simple/{name}", exist_ok=True)
    with open(f"{root}/simple/{name}/index.html", "w") as out:
        out.write("<!DOCTYPE html><html><body>\n" + "\n".join(links) + "\n</body></html>\n")
PY
python3 -m http.server 0 --bind 127.0.0.1 --directory "$work/up" > "$work/up.log" 2>&1 &
for _ in $(seq 100); do grep -q "Serving HTTP" "$work/up.log" && break; sleep 0.1; done
port=$(grep -o 'port [0-9]*' "$work/up.log" | head -1 | cut -d' ' -f2)
up="http://127.0.0.1:$port"
printf '%s\n' "${reqs[@]}" > "$work/requirements.in"

# start NAME DERIVE: a proxy over the fixture index; sets $listen_NAME.
start() {
  local name=$1 derive=$2
  mkdir -p "$work/$name"
  printf '[[repository]]\nname = "pypi"\nprefix = "/pypi/"\nformat = "pypi"\nupstream = "%s/simple/"\nfiles_upstream = "%s/"\nderive_files = %s\n' \
    "$up" "$up" "$derive" > "$work/$name/hangar.toml"
  "$bin" --config "$work/$name/hangar.toml" --listen 127.0.0.1:0 --admin 127.0.0.1:0 \
    --cache-dir "$work/$name/cache" --log info > "$work/$name/out" 2> "$work/$name/log" &
  for _ in $(seq 600); do grep -q ready "$work/$name/out" 2>/dev/null && break; sleep 0.1; done
  grep -q ready "$work/$name/out" || { echo "proxy '$name' did not start:" >&2; cat "$work/$name/log" >&2; exit 1; }
  printf -v "listen_$name" '%s' "$(grep -o 'listen=[0-9.:]*' "$work/$name/out" | cut -d= -f2)"
}
start on true
start off false

# With RTT_MS, clients reach each proxy through a relay adding the round trip.
if [ "$rtt_ms" != 0 ]; then
  cat > "$work/relay.py" <<'PY'
import asyncio, sys
delay = float(sys.argv[2]) / 2000
host, port = sys.argv[1].rsplit(":", 1)

async def pump(reader, writer):
    queue = asyncio.Queue()
    async def send():
        while (item := await queue.get()) is not None:
            due, data = item
            await asyncio.sleep(max(0, due - asyncio.get_running_loop().time()))
            writer.write(data)
            await writer.drain()
        writer.close()
    sender = asyncio.create_task(send())
    while data := await reader.read(1 << 16):
        queue.put_nowait((asyncio.get_running_loop().time() + delay, data))
    queue.put_nowait(None)
    await sender

async def serve(r, w):
    try:
        ur, uw = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pump(r, uw), pump(ur, w))
    except (ConnectionError, OSError):
        w.close()

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    print(f"relay {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()

asyncio.run(main())
PY
  for name in on off; do
    python3 "$work/relay.py" "$(eval echo "\$listen_$name")" "$rtt_ms" > "$work/$name/relay" &
    for _ in $(seq 100); do grep -q relay "$work/$name/relay" && break; sleep 0.1; done
    printf -v "client_$name" '127.0.0.1:%s' "$(cut -d' ' -f2 "$work/$name/relay")"
  done
else
  client_on=$listen_on client_off=$listen_off
fi

# run NAME CLIENT: time one resolution; prints "seconds requests bytes" (from the access log).
run() {
  local name=$1 client=$2 listen mark t0 t1
  listen=$(eval echo "\$client_$name")
  mark=$(wc -c < "$work/$name/log")
  t0=$(date +%s.%N)
  case $client in
    uv) uv pip compile -q --no-cache --no-header --python python3 --index-url "http://$listen/pypi/simple/" \
          "$work/requirements.in" -o /dev/null ;;
    pip) "$pip_python" -m pip install -q --dry-run --ignore-installed --no-cache-dir \
          --index-url "http://$listen/pypi/simple/" -r "$work/requirements.in" ;;
  esac
  t1=$(date +%s.%N)
  tail -c +"$((mark + 1))" "$work/$name/log" | python3 -c '
import re, sys
n = b = 0
for line in sys.stdin:
    m = re.search(r"access:.* bytes=(\d+)", line)
    if m: n += 1; b += int(m.group(1))
print(f"{float(sys.argv[1]) - float(sys.argv[2]):.3f} {n} {b}")' "$t1" "$t0"
}

# Warm both: every wheel stored (pip downloads them all), then one resolution each so the
# "on" proxy has derived the metadata and its pages announce it.
for name in on off; do
  listen=$(eval echo "\$listen_$name")
  python3 -m pip download -q --no-cache-dir --only-binary :all: --index-url "http://$listen/pypi/simple/" \
    -d "$work/$name/dl" -r "$work/requirements.in"
done
for name in on off; do run "$name" uv > /dev/null; run "$name" pip > /dev/null; done
derived=$(curl -s "http://$(grep -o 'admin=[0-9.:]*' "$work/on/out" | cut -d= -f2)/metrics" \
  | awk '/^hangar_derived_files_total.*outcome="derived"/ {s += $2} END {print s + 0}')
echo "wheels held: $(ls "$work/up/files" | wc -l), metadata derived by the 'on' proxy: $derived; $("$pip_python" -m pip --version | cut -d' ' -f1-2), $(uv --version)"

for client in uv pip; do
  : > "$work/$client.on"; : > "$work/$client.off"
  for _ in $(seq "$rounds"); do
    run on "$client" >> "$work/$client.on"
    run off "$client" >> "$work/$client.off"
  done
done
python3 - "$work" "$rounds" "$rtt_ms" <<'PY'
import statistics, sys
work, rounds = sys.argv[1], sys.argv[2]
print(f"median of {rounds} rounds (min-max seconds), warm proxy, no client cache, added RTT {sys.argv[3]} ms")
print(f"{'client':6} {'derive_files':>12} {'seconds':>20} {'requests':>9} {'bytes served':>14}")
for client in ("uv", "pip"):
    med = {}
    for name in ("on", "off"):
        rows = [tuple(map(float, l.split())) for l in open(f"{work}/{client}.{name}")]
        t = [r[0] for r in rows]
        med[name] = statistics.median(t)
        print(f"{client:6} {name:>12} {med[name]:8.2f} ({min(t):.2f}-{max(t):.2f}) "
              f"{int(statistics.median(r[1] for r in rows)):9} {int(statistics.median(r[2] for r in rows)):14}")
    print(f"{client:6} {'off/on':>12} {med['off'] / med['on']:8.2f}x")
PY
