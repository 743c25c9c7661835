#!/usr/bin/env bash
# run-sink.sh — examples/sink (tern) against Postfix's smtp-sink, on
# loopback, interleaved rounds. Builds nothing: give it a build directory
# that holds examples/sink and bench/bench_pipeline (RelWithDebInfo).
#
#   bench/run-sink.sh [BUILD_DIR]        (default build/)
#
# Environment: ROUNDS (5), MSGS (20000), IDLE_CONNS (10000),
#   SMTP_SINK (/usr/sbin/smtp-sink), SMTP_SOURCE (/usr/sbin/smtp-source),
#   KEEP (directory for the raw results; default a temporary one, removed).
#
# Servers (all on 127.0.0.1, free ports, children of this script):
#   tern       examples/sink --workers 1      (one process, one thread)
#   smtp-sink  smtp-sink -u USER -m N 127.0.0.1:PORT 4096  (no -c: its
#              counter costs a write() per message on the server side)
#   tern w2    examples/sink --workers 2      (the extra row)
#
# Figures per round, each server in turn (A B C A B C ...):
#   a  smtp-source -d -s 20 -m MSGS -l 1024: lock-step, 20 kept connections
#      msgs/s (client wall time) and server CPU µs/message
#   b  bench_pipeline -M data -s 20 -m MSGS -l 1024: MAIL/RCPT/DATA in one
#      write, content after 354, next MAIL/RCPT/DATA with the "." (smtp-sink
#      has no CHUNKING, so DATA for both)
#   bb bench_pipeline -M bdat -k 8 (tern only; ratio against smtp-sink's b)
#   c  smtp-source -d -s 4 -m 200 -l 1048576: MB/s (10^6 payload octets/s)
#      and server CPU µs per MB
#   cp bench_pipeline -M data, same 1 MiB load;  cb: tern BDAT -k 2
#   d  fresh servers; IDLE_CONNS connections each send EHLO and read the
#      reply; (VmRSS after - VmRSS before) / IDLE_CONNS
# Server CPU is utime+stime from /proc/PID/stat (10 ms ticks) and, more
# precisely, the sum of /proc/PID/task/*/schedstat run times (ns); the
# table uses schedstat when the kernel has it. Medians over the rounds.
set -euo pipefail

BUILD=${1:-build}
SINK=$BUILD/examples/sink
PIPE=$BUILD/bench/bench_pipeline
SMTP_SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}
SMTP_SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
ROUNDS=${ROUNDS:-5}
MSGS=${MSGS:-20000}
IDLE=${IDLE_CONNS:-10000}
BUDGET=${BUDGET:-540} # seconds: stop starting rounds after this

for f in "$SINK" "$PIPE" "$SMTP_SINK" "$SMTP_SOURCE"; do
  [ -x "$f" ] || { echo "run-sink.sh: $f missing (build first)" >&2; exit 2; }
done

if [ -n "${KEEP:-}" ]; then
  OUT=$KEEP; mkdir -p "$OUT"
else
  OUT=$(mktemp -d /tmp/run-sink.XXXXXX)
fi
RES=$OUT/results
: >"$RES"

ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt $((IDLE + 200)) ]; then
  echo "run-sink.sh: RLIMIT_NOFILE $(ulimit -n) < $((IDLE + 200))" >&2
  exit 2
fi

declare -A PID PORT
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$OUT"
}
trap cleanup EXIT

free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 10000))
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

start() { # name [kind: tern|tern2|pfx, default the name]
  local n=$1 kind=${2:-$1} port pid try
  for try in 1 2 3; do
    port=$(free_port)
    case $kind in
      tern) "$SINK" "smtp://127.0.0.1:$port" --workers 1 2>>"$OUT/$n.log" & ;;
      tern2) "$SINK" "smtp://127.0.0.1:$port" --workers 2 2>>"$OUT/$n.log" & ;;
      pfx) "$SMTP_SINK" -u "$(id -un)" -m $((IDLE + 1000)) \
             "127.0.0.1:$port" 4096 >>"$OUT/$n.log" 2>&1 & ;;
    esac
    pid=$!
    if wait_port "$port" "$pid"; then
      PID[$n]=$pid; PORT[$n]=$port; PIDS+=("$pid")
      sleep 0.2
      return 0
    fi
    kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  done
  echo "run-sink.sh: cannot start $n" >&2; exit 1
}

stop() { # name
  local p=${PID[$1]}
  kill "$p" 2>/dev/null || true
  # tern shuts down gracefully; give it a moment, then insist
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
  kill -9 "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  local keep=() q
  for q in "${PIDS[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
  PIDS=("${keep[@]}")
}

ticks() { # utime+stime of a process (all threads), clock ticks
  local s
  s=$(<"/proc/$1/stat") || { echo "run-sink.sh: server $1 is gone" >&2; exit 1; }
  s=${s##*) }
  set -- $s
  echo $(( ${12} + ${13} ))
}
runns() { # sum of the threads' on-CPU time (schedstat), ns; 0 without it
  local t sum=0 a
  for t in /proc/"$1"/task/*/schedstat; do
    read -r a _ <"$t" 2>/dev/null || continue
    sum=$((sum + a))
  done
  echo $sum
}
HZ=$(getconf CLK_TCK)
HAVE_SCHED=0; [ -r /proc/self/schedstat ] && HAVE_SCHED=1

rec() { echo "$1 $2 $3" >>"$RES"; } # metric server value

# load NAME METRIC UNITS(count for per-unit CPU) SCALE CMD...
#   runs CMD against server NAME, records METRIC.rate = UNITS/s (SCALE
#   divides UNITS for MB), METRIC.cpu = server CPU µs per unit.
load() {
  local n=$1 m=$2 units=$3 kind=$4; shift 4
  local pid=${PID[$n]} t0 t1 c0 c1 s0 s1 out rc secs cpu_us
  sleep 0.2
  c0=$(ticks "$pid"); s0=$(runns "$pid"); t0=$(date +%s%N)
  set +e
  out=$(timeout 120 "$@" 2>>"$OUT/client.log"); rc=$?
  set -e
  t1=$(date +%s%N); c1=$(ticks "$pid"); s1=$(runns "$pid")
  if [ $rc -ne 0 ]; then
    echo "  $m $n: client failed (rc $rc): $*" | tee -a "$OUT/client.log" >&2
    return 0
  fi
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.6f",(b-a)/1e9}')
  # bench_pipeline times itself (first connect .. last reply)
  case $out in *RESULT*) secs=$(sed -n 's/.* seconds=\([0-9.]*\).*/\1/p' <<<"$out");; esac
  if [ $HAVE_SCHED = 1 ] && [ "$s1" -gt 0 ]; then
    cpu_us=$(awk -v d=$((s1 - s0)) 'BEGIN{printf "%.3f",d/1e3}')
  else
    cpu_us=$(awk -v d=$((c1 - c0)) -v hz="$HZ" 'BEGIN{printf "%.3f",d*1e6/hz}')
  fi
  local tick_us; tick_us=$(awk -v d=$((c1 - c0)) -v hz="$HZ" 'BEGIN{printf "%.0f",d*1e6/hz}')
  awk -v n="$n" -v m="$m" -v u="$units" -v k="$kind" -v s="$secs" \
      -v c="$cpu_us" -v tc="$tick_us" 'BEGIN{
        q = (k == "MB") ? u / 1e6 : u
        printf "%s.rate %s %.2f\n%s.cpu %s %.3f\n", m, n, q/s, m, n, c/q
        printf "  %-3s %-6s %10.1f %s/s  server CPU %8.2f us/%s (stat: %.2f)  %.3f s\n",
          m, n, q/s, k, c/q, k, tc/q, s > "/dev/stderr"
      }' >>"$RES"
}

idle_rss() { # kind: a fresh server of that kind, stopped afterwards
  local n=idle_$1 pid before after hp log
  start "$n" "$1"
  pid=${PID[$n]}
  sleep 0.3
  before=$(awk '/^VmRSS/{print $2}' "/proc/$pid/status")
  log=$OUT/idle.$n.out; : >"$log"
  timeout 180 "$PIPE" -i "$IDLE" -t 120 "127.0.0.1:${PORT[$n]}" \
    >"$log" 2>>"$OUT/client.log" &
  hp=$!
  for _ in $(seq 1200); do
    grep -q ready "$log" && break
    kill -0 "$hp" 2>/dev/null || break
    sleep 0.1
  done
  if grep -q ready "$log"; then
    sleep 0.5
    after=$(awk '/^VmRSS/{print $2}' "/proc/$pid/status")
    local per; per=$(awk -v a="$after" -v b="$before" -v c="$IDLE" \
      'BEGIN{printf "%.1f",(a-b)*1024/c}')
    rec d.rss "$1" "$per"
    printf '  d   %-6s VmRSS %s kB -> %s kB: %s B/conn\n' "$n" "$before" \
      "$after" "$per" >&2
  else
    echo "  d   $n: idle connections not ready" >&2
  fi
  kill "$hp" 2>/dev/null || true; wait "$hp" 2>/dev/null || true
  stop "$n"
}

echo "run-sink.sh $(date -u +%FT%TZ)  $(nproc) cores  $(uname -r)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "tern: $SINK   peer: $SMTP_SINK (Postfix package $(dpkg-query -W -f='${Version}' postfix 2>/dev/null || echo ?))"
echo "rounds: $ROUNDS   1 KiB messages: $MSGS   idle connections: $IDLE"
echo

start tern; start pfx; start tern2
SERVERS="tern pfx tern2"
A=127.0.0.1
for r in $(seq "$ROUNDS"); do
  if [ "$SECONDS" -gt "$BUDGET" ]; then
    echo "time budget reached after $((r - 1)) rounds" >&2; break
  fi
  echo "round $r (load $(cut -d' ' -f1 /proc/loadavg))" >&2
  for n in $SERVERS; do
    load $n a "$MSGS" msg "$SMTP_SOURCE" -d -s 20 -m "$MSGS" -l 1024 "$A:${PORT[$n]}"
  done
  for n in $SERVERS; do
    load $n b "$MSGS" msg "$PIPE" -q -M data -s 20 -m "$MSGS" -l 1024 "$A:${PORT[$n]}"
  done
  for n in tern tern2; do
    load $n bb "$MSGS" msg "$PIPE" -q -M bdat -k 8 -s 20 -m "$MSGS" -l 1024 "$A:${PORT[$n]}"
  done
  for n in $SERVERS; do
    load $n c $((200 * 1048576)) MB "$SMTP_SOURCE" -d -s 4 -m 200 -l 1048576 "$A:${PORT[$n]}"
  done
  for n in $SERVERS; do
    load $n cp $((200 * 1048576)) MB "$PIPE" -q -M data -s 4 -m 200 -l 1048576 "$A:${PORT[$n]}"
  done
  for n in tern tern2; do
    load $n cb $((200 * 1048576)) MB "$PIPE" -q -M bdat -k 2 -s 4 -m 200 -l 1048576 "$A:${PORT[$n]}"
  done
  # idle connections on fresh processes (warm heaps would hide growth)
  for n in tern pfx; do
    idle_rss "$n"
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

med() { # metric server
  awk -v k="$1" -v s="$2" '$1==k && $2==s {v[n++]=$3}
    END{ if(!n){print "-"; exit}
         for(i=0;i<n;i++)for(j=i+1;j<n;j++)if(v[j]<v[i]){t=v[i];v[i]=v[j];v[j]=t}
         m = n%2 ? v[(n-1)/2] : (v[n/2-1]+v[n/2])/2; print m }' "$RES"
}
cnt() { awk -v k="$1" -v s="$2" '$1==k && $2==s' "$RES" | wc -l; }

# row LABEL METRIC TERN_SERVER PEER_METRIC TARGET_OP TARGET
#   TARGET_OP: ge (ratio >= target) or le (ratio <= target) or abs (tern <= target)
row() {
  local label=$1 m=$2 ts=$3 pm=$4 op=$5 tg=$6
  local t p; t=$(med "$m" "$ts"); p=$(med "$pm" pfx)
  awk -v l="$label" -v t="$t" -v p="$p" -v op="$op" -v tg="$tg" \
      -v nt="$(cnt "$m" "$ts")" -v np="$(cnt "$pm" pfx)" 'BEGIN{
    r = (t != "-" && p != "-" && p > 0) ? sprintf("%.2f", t/p) : "-"
    ok = "-"
    if (r != "-" && op == "ge") { ok = (t/p >= tg) ? "met" : "MISSED"; tgt = ">= " tg }
    else if (r != "-" && op == "le") { ok = (t/p <= tg) ? "met" : "MISSED"; tgt = "<= " tg }
    else if (op == "abs") { ok = (t != "-" && t <= tg) ? "met" : "MISSED"; tgt = "tern <= " tg }
    else tgt = ""
    printf "| %-44s | %11s | %11s | %6s | %-10s | %-6s | %d/%d |\n", l, \
      (t=="-"?"-":sprintf("%.1f",t)), (p=="-"?"-":sprintf("%.1f",p)), r, tgt, ok, nt, np }'
}

echo
echo "load average after: $LOAD_AFTER"
echo
echo "| figure (median of rounds)                    |        tern |   smtp-sink | tern/sink | target | result | n |"
echo "|---|---:|---:|---:|---|---|---|"
row "a kept 1 KiB, smtp-source: msgs/s"            a.rate  tern a.rate  ge 1
row "a server CPU us/msg"                          a.cpu   tern a.cpu   le 0.3333
row "b pipelined DATA 1 KiB: msgs/s"               b.rate  tern b.rate  ge 1.5
row "b server CPU us/msg"                          b.cpu   tern b.cpu   le 0.3333
row "bb tern BDAT k=8 vs sink DATA-pipe: msgs/s"   bb.rate tern b.rate  ge 1.5
row "bb server CPU us/msg"                         bb.cpu  tern b.cpu   le 0.3333
row "c 1 MiB smtp-source: MB/s"                    c.rate  tern c.rate  ge 4
row "c server CPU us/MB"                           c.cpu   tern c.cpu   le 0.3333
row "cp 1 MiB pipelined DATA: MB/s"                cp.rate tern cp.rate ge 4
row "cp server CPU us/MB"                          cp.cpu  tern cp.cpu  le 0.3333
row "cb tern BDAT k=2 vs sink DATA-pipe: MB/s"     cb.rate tern cp.rate ge 4
row "cb server CPU us/MB"                          cb.cpu  tern cp.cpu  le 0.3333
row "d RSS per idle connection, bytes"             d.rss   tern d.rss   abs 2048
echo "| **tern --workers 2** | | | | | | |"
row "a (w2) kept 1 KiB: msgs/s"                    a.rate  tern2 a.rate  ge 1
row "a (w2) server CPU us/msg"                     a.cpu   tern2 a.cpu   le 0.3333
row "b (w2) pipelined DATA: msgs/s"                b.rate  tern2 b.rate  ge 1.5
row "bb (w2) BDAT k=8: msgs/s"                     bb.rate tern2 b.rate  ge 1.5
row "c (w2) 1 MiB smtp-source: MB/s"               c.rate  tern2 c.rate  ge 4
row "cb (w2) 1 MiB BDAT k=2: MB/s"                 cb.rate tern2 cp.rate ge 4
echo
echo "n = rounds measured (tern/smtp-sink). CPU: $([ $HAVE_SCHED = 1 ] && echo schedstat ns || echo "/proc/stat ticks (1/$HZ s)")."
[ -n "${KEEP:-}" ] && echo "raw results: $RES"
exit 0
