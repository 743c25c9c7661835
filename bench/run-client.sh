#!/usr/bin/env bash
# run-client.sh — `tern bench` (the client runtime) beside Postfix's
# smtp-source, both sending to the same Postfix smtp-sink on loopback,
# interleaved rounds (A B C A B C ...). Builds nothing: give it a build
# directory holding src/cli/tern (RelWithDebInfo: `make bench` or
# cmake -DCMAKE_BUILD_TYPE=RelWithDebInfo).
#
#   bench/run-client.sh [BUILD_DIR]        (default build/)
#
# Environment: ROUNDS (3), MSGS (20000), BIG_MSGS (200), SESSIONS (20),
#   SMTP_SINK (/usr/sbin/smtp-sink), SMTP_SOURCE (/usr/sbin/smtp-source),
#   KEEP (directory for the raw results; default a temporary one, removed).
#
# Loads (each one round after the other, every client against the same
# smtp-sink, started here on a free loopback port, no -c counter):
#   small: 1 KiB messages, SESSIONS kept connections, MSGS messages
#     src    smtp-source -d -s 20 -m 20000 -l 1024   (lock-step; smtp-source
#            has no pipelining)
#     tern   tern bench --sessions 20 --messages 20000 --size 1024
#            --pipelining off       (the same lock-step dialogue)
#     ternp  the same with --pipelining on (MAIL/RCPT/DATA in one write)
#   big: 1 MiB messages, BIG_MSGS of them over SESSIONS connections
#     src    smtp-source -d -s 20 -m 200 -l 1048576
#     tern   tern bench --sessions 20 --messages 200 --size 1M
#            (--pipelining on; the body dominates)
#
# Both clients are measured the same way: /usr/bin/time -f "%e %U %S"
# around the process (wall seconds, user and system CPU seconds: the
# whole process, start-up included). messages/s = messages / wall;
# client CPU µs/message = (user + system) / messages. (tern bench also
# prints its own figures; they are not used here so that both sides are
# measured alike.) smtp-source's -l counts the payload only and it adds
# ~150 octets of headers; tern bench's --size counts the whole message.
# smtp-sink runs on the same machine: on 2 cores it competes with the
# client for CPU, so messages/s is a system figure and CPU/message is the
# client's own cost. Medians over the rounds; ratios tern / smtp-source.
set -euo pipefail

BUILD=${1:-build}
TERN=$BUILD/src/cli/tern
SMTP_SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}
SMTP_SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
ROUNDS=${ROUNDS:-3}
MSGS=${MSGS:-20000}
BIG_MSGS=${BIG_MSGS:-200}
SESSIONS=${SESSIONS:-20}
TIME=/usr/bin/time

for f in "$TERN" "$SMTP_SINK" "$SMTP_SOURCE" "$TIME"; do
  [ -x "$f" ] || { echo "run-client.sh: $f missing" >&2; exit 2; }
done

if [ -n "${KEEP:-}" ]; then
  OUT=$KEEP; mkdir -p "$OUT"
else
  OUT=$(mktemp -d /tmp/run-client.XXXXXX)
fi
RES=$OUT/results
: >"$RES"
SINK_PID=

cleanup() {
  if [ -n "$SINK_PID" ]; then
    kill "$SINK_PID" 2>/dev/null || true
    wait "$SINK_PID" 2>/dev/null || true
  fi
  [ -n "${KEEP:-}" ] || rm -rf "$OUT"
}
trap cleanup EXIT

free_port() {
  local p
  while :; do
    p=$((30000 + RANDOM % 10000))
    [ -z "$(ss -Htan "( sport = :$p or dport = :$p )")" ] && { echo $p; return; }
  done
}

wait_port() { # port pid
  local i
  for i in $(seq 100); do
    kill -0 "$2" 2>/dev/null || return 1
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

PORT=
for try in 1 2 3; do
  PORT=$(free_port)
  # -u: smtp-sink insists on a user name when started as root
  (cd "$OUT" && exec "$SMTP_SINK" -u "$(id -un)" -m 1000 \
     "127.0.0.1:$PORT" 1024) >>"$OUT/sink.log" 2>&1 &
  SINK_PID=$!
  wait_port "$PORT" "$SINK_PID" && break
  kill "$SINK_PID" 2>/dev/null || true; wait "$SINK_PID" 2>/dev/null || true
  SINK_PID=
done
[ -n "$SINK_PID" ] || { echo "run-client.sh: cannot start smtp-sink" >&2; exit 1; }
sleep 0.2

# one measured run: load client messages command...
measure() {
  local load=$1 client=$2 n=$3; shift 3
  local t
  if ! "$TIME" -o "$OUT/time" -f "%e %U %S" "$@" >"$OUT/out" 2>&1; then
    echo "run-client.sh: $load/$client failed:" >&2
    cat "$OUT/out" >&2
    exit 1
  fi
  if [ "$client" != src ] && ! grep -q "ok $n failed 0" "$OUT/out"; then
    echo "run-client.sh: $load/$client did not deliver $n:" >&2
    cat "$OUT/out" >&2
    exit 1
  fi
  t=$(tail -n 1 "$OUT/time")
  echo "$load $client $n $t" >>"$RES"
  awk -v l="$load" -v c="$client" -v n="$n" '{
        printf "  %-6s %-6s %8.0f msg/s  %7.1f us/msg CPU  (%.2f s)\n",
               l, c, n / $1, ($2 + $3) * 1e6 / n, $1 }' <<<"$t" >&2
}

SRC_URL=127.0.0.1:$PORT
URL=smtp://127.0.0.1:$PORT
for r in $(seq "$ROUNDS"); do
  echo "round $r/$ROUNDS" >&2
  measure small src "$MSGS" "$SMTP_SOURCE" -d -s "$SESSIONS" -m "$MSGS" \
    -l 1024 "$SRC_URL"
  measure small tern "$MSGS" "$TERN" bench --quiet --server "$URL" \
    --sessions "$SESSIONS" --messages "$MSGS" --size 1024 --pipelining off
  measure small ternp "$MSGS" "$TERN" bench --quiet --server "$URL" \
    --sessions "$SESSIONS" --messages "$MSGS" --size 1024 --pipelining on
  measure big src "$BIG_MSGS" "$SMTP_SOURCE" -d -s "$SESSIONS" \
    -m "$BIG_MSGS" -l 1048576 "$SRC_URL"
  measure big tern "$BIG_MSGS" "$TERN" bench --quiet --server "$URL" \
    --sessions "$SESSIONS" --messages "$BIG_MSGS" --size 1M
done

# medians and the table (markdown, on stdout)
python3 - "$RES" "$MSGS" "$BIG_MSGS" "$SESSIONS" <<'EOF'
import statistics, sys
msgs, big, sess = (format(int(x), ",") for x in sys.argv[2:5])
rows = {}
for line in open(sys.argv[1]):
    load, client, n, wall, user, sys_ = line.split()
    n = int(n); wall = float(wall); cpu = float(user) + float(sys_)
    rows.setdefault((load, client), []).append((n / wall, cpu * 1e6 / n,
                                                n * (1048576 if load == "big"
                                                     else 1024) / wall / 1e6))
def med(k, i):
    return statistics.median(v[i] for v in rows[k])
names = {"src": "smtp-source", "tern": "tern bench, pipelining off",
         "ternp": "tern bench, pipelining on"}
print("| load | client | messages/s | MB/s | client CPU µs/message | runs |")
print("|---|---|---|---|---|---|")
for (load, client) in rows:
    name = names[client] if load == "small" else (
        "tern bench" if client == "tern" else names[client])
    print("| %s | %s | %s | %.1f | %s | %d |" % (
        "1 KiB × %s, %s sessions" % (msgs, sess) if load == "small"
        else "1 MiB × %s, %s sessions" % (big, sess), name,
        format(round(med((load, client), 0)), ","), med((load, client), 2),
        format(round(med((load, client), 1), 1), ",.1f"),
        len(rows[(load, client)])))
print()
for load, client in (("small", "tern"), ("small", "ternp"), ("big", "tern")):
    if (load, client) in rows and (load, "src") in rows:
        print("* %s, %s / smtp-source: messages/s × %.2f, CPU per message "
              "× %.2f" % (load, names[client] if load == "small"
                          else "tern bench",
                          med((load, client), 0) / med((load, "src"), 0),
                          med((load, client), 1) / med((load, "src"), 1)))
EOF
