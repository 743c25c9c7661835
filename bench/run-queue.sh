#!/usr/bin/env bash
# run-queue.sh — the durable queue end to end: `tern serve` queueing and
# relaying to Postfix's smtp-sink, beside a private Postfix instance
# relaying to the same smtp-sink, on loopback, interleaved rounds. Then,
# with QUEUED messages in tern's queue and the next hop down: restart time
# and `tern queue list` time. Builds nothing: give it a build directory
# that holds src/cli/tern (RelWithDebInfo).
#
#   bench/run-queue.sh [BUILD_DIR]        (default build/)
#
# Environment: ROUNDS (3), SESSIONS ("1 20 100"), M_<N> (messages per run
#   at N sessions: M_1 500, M_20 5000, M_100 10000, else 5000),
#   TARGETS ("tern postfix tern-nosync": the order within a round; with
#   SESSIONS="" TARGETS="" only part c/d runs),
#   WORKERS ([server] workers for tern; default: the number of cores),
#   CONCURRENCY (20: tern's [queue] concurrency and Postfix's
#   smtp_destination_concurrency_limit), STRACE (1: one short run per
#   session count under strace -c -f, attached to the running tern and
#   Postfix, counting fsync/fdatasync and all system calls per message;
#   0 to skip), RESTART (1: part c/d below; 0 to skip), QUEUED (100000),
#   PF_BIG (0: 1 runs part c/d for the private Postfix as well:
#   postqueue -p / -j instead of tern queue list; filling takes minutes),
#   RUN_TIMEOUT (300 s: the longest a run may take to reach the sink),
#   SETTLE (1 s: quiet time after the last message reached the sink,
#   before the CPU is read, so clean-up after delivery is counted),
#   WARMUP (1000: at most this many messages in one unrecorded run per
#   target before the rounds of each session count),
#   CGROUP (1; 0: measure CPU from /proc even where cgroups work),
#   DATA_DIR (where queues go; default under BUILD_DIR unless that is
#   tmpfs, else /var/tmp), KEEP (directory for raw results and logs),
#   SMTP_SINK, SMTP_SOURCE (/usr/sbin/...), POSTFIX_DAEMON_DIR
#   (/usr/lib/postfix/sbin), BUDGET (seconds: no new round after this).
#
# Peers (all children of this script, on free 127.0.0.1 ports):
#   sink      smtp-sink -c -u USER 127.0.0.1:S 4096 — one for everything;
#             -c prints "sess=.. quit=.. mesg=N\r" per message to a file,
#             which is how messages are counted at the sink
#   tern      tern serve -c GEN.ini: one listener, [delivery] target = smtp,
#             url = smtp://127.0.0.1:S, queue = yes; [queue] directory of
#             its own, fsync = yes, concurrency CONCURRENCY; workers WORKERS
#   tern-nosync  the same with [queue] fsync = no (secondary line)
#   postfix   a private instance: own config_directory and queue_directory
#             (generated main.cf/master.cf, nothing from /etc/postfix but
#             the binaries), its own master (-d, foreground), smtpd on
#             127.0.0.1:P, relayhost = [127.0.0.1]:S, no local delivery,
#             no DNS, compatibility_level 3.6, logging to a file through
#             postlogd (tern logs to a file too)
# Load, per round and session count N, each target in turn:
#   smtp-source -d -s N -m M -l 1024 -f bench@example.com
#               -t rcpt@example.net 127.0.0.1:PORT
# Measured END TO END: t0 just before smtp-source starts, t_end when the
# sink's counter has grown by M (a poller reads the counter file every
# 10 ms; it is started before t0). msgs/s = M / (t_end - t0); the
# "accept" rate, M / smtp-source's own time, is printed beside it.
# CPU of the whole process tree: each target runs in a cgroup of its own
# (cgroup v1 cpuacct.usage, or v2 cpu.stat usage_usec: written, but only
# v1 was available to test it) when the script
# may create one (root); otherwise tern: /proc/PID/task/*/schedstat,
# postfix: utime+stime+cutime+cstime of master and every live descendant
# (children that exited were reaped by master, so their time is in
# master's cutime/cstime). Read before t0 and SETTLE seconds after t_end.
# Checks: smtp-source exits 0 and prints nothing; the sink counts exactly
# M more messages (more: duplicates, the script stops); Postfix's incoming,
# active, deferred, maildrop and hold queues are empty after each run.
#
# Part c/d (RESTART=1): a fresh tern whose next hop is a closed port;
# QUEUED messages are sent (smtp-source -s 100; the ingest rate is
# printed), then, with all of them deferred:
#   list (daemon)   tern queue list -c INI and --json, daemon running
#   stop            SIGTERM until exit (seconds)
#   list (offline)  the same with the daemon stopped (spool scan)
#   restart         t0 = exec of tern serve, ready = first 220 greeting
#                   read on its port; memory (Pss) before and after;
#                   the lists once more after the restart
# Output: per-run lines, then the table of medians (every round in
# brackets), the targets at 20 sessions, the strace counts and part c/d.
set -euo pipefail

BUILD=${1:-build}
TERN=$BUILD/src/cli/tern
SMTP_SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}
SMTP_SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
PFD=${POSTFIX_DAEMON_DIR:-/usr/lib/postfix/sbin}
PY=/usr/bin/python3
ROUNDS=${ROUNDS:-3}
SESSIONS=${SESSIONS-"1 20 100"}
TARGETS=${TARGETS-"tern postfix tern-nosync"}
WORKERS=${WORKERS:-$(nproc)}
CONCURRENCY=${CONCURRENCY:-20}
STRACE=${STRACE:-1}
RESTART=${RESTART:-1}
QUEUED=${QUEUED:-100000}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
SETTLE=${SETTLE:-1}
BUDGET=${BUDGET:-3000}
WARMUP=${WARMUP:-1000}
FROM=bench@example.com
RCPT=rcpt@example.net

for f in "$TERN" "$SMTP_SINK" "$SMTP_SOURCE" "$PFD/master" /usr/sbin/postfix "$PY"; do
  [ -x "$f" ] || { echo "run-queue.sh: $f missing" >&2; exit 2; }
done
if [ "$STRACE" = 1 ] && ! command -v strace >/dev/null; then
  echo "run-queue.sh: strace not found: system call counts skipped" >&2
  STRACE=0
fi

msgs() { # sessions
  local v="M_$1"
  case $1 in 1) echo "${!v:-500}" ;; 20) echo "${!v:-5000}" ;;
    100) echo "${!v:-10000}" ;; *) echo "${!v:-5000}" ;; esac
}

if [ -n "${KEEP:-}" ]; then
  OUT=$KEEP; mkdir -p "$OUT"
else
  OUT=$(mktemp -d /tmp/run-queue.XXXXXX)
fi
RES=$OUT/results
: >"$RES"

# Queues go on a real disk: fsync on tmpfs costs nothing.
is_mem_fs() { case $(stat -f -c %T "$1") in tmpfs|ramfs) return 0 ;; esac; return 1; }
if [ -n "${DATA_DIR:-}" ]; then
  DATA_BASE=$DATA_DIR
elif ! is_mem_fs "$BUILD"; then
  DATA_BASE=$BUILD
else
  DATA_BASE=/var/tmp
fi
mkdir -p "$DATA_BASE"
DATA=$(mktemp -d "$DATA_BASE/run-queue-data.XXXXXX")
if is_mem_fs "$DATA"; then
  echo "run-queue.sh: $DATA is on $(stat -f -c %T "$DATA"): use DATA_DIR=<dir on disk>" >&2
  rm -rf "$DATA"; exit 2
fi
DATA=$(cd "$DATA" && pwd)
# Postfix's daemons run as mail_owner and must reach their queue.
chmod 755 "$DATA"

ulimit -n "$(ulimit -Hn)"

# ---- CPU of a process tree: cgroups when we may make them -------------------
CG_KIND=none CG_ROOT=
if [ "${CGROUP:-1}" = 0 ]; then
  : # asked for the /proc figures
elif [ -w /sys/fs/cgroup/cpuacct ] && [ -r /sys/fs/cgroup/cpuacct/cpuacct.usage ]; then
  CG_KIND=v1 CG_ROOT=/sys/fs/cgroup/cpuacct/run-queue.$$
elif [ -r /sys/fs/cgroup/cgroup.controllers ] && [ -w /sys/fs/cgroup ]; then
  CG_KIND=v2 CG_ROOT=/sys/fs/cgroup/run-queue.$$
fi
if [ "$CG_KIND" != none ] && ! mkdir "$CG_ROOT" 2>/dev/null; then CG_KIND=none; fi

declare -A PID PORT CG
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$CG_KIND" != none ]; then
    # every process of a group must be gone before rmdir
    for p in "$CG_ROOT"/*/; do
      [ -d "$p" ] || continue
      for _ in $(seq 50); do [ -s "$p/cgroup.procs" ] || break; sleep 0.1; done
      rmdir "$p" 2>/dev/null || true
    done
    rmdir "$CG_ROOT" 2>/dev/null || true
  fi
  if [ -n "${KEEP:-}" ]; then
    for p in "$DATA"/*/maillog; do [ -f "$p" ] && cp "$p" "$OUT/$(basename "$(dirname "$p")").maillog"; done
  fi
  rm -rf "$DATA"
  [ -n "${KEEP:-}" ] || rm -rf "$OUT"
}
trap cleanup EXIT

HZ=$(getconf CLK_TCK)
# cpu_ns NAME: CPU time of target NAME's whole tree so far, ns.
cpu_ns() {
  local n=$1 cg=${CG[$1]:-}
  if [ -n "$cg" ]; then
    if [ "$CG_KIND" = v1 ]; then cat "$cg/cpuacct.usage"
    else awk '$1 == "usage_usec" {print $2 * 1000}' "$cg/cpu.stat"; fi
    return
  fi
  case $n in
    postfix*) tree_ns "${PID[$n]}" ;;
    *) local t sum=0 a
       for t in /proc/"${PID[$n]}"/task/*/schedstat; do
         read -r a _ <"$t" 2>/dev/null || continue; sum=$((sum + a))
       done
       echo $sum ;;
  esac
}
# tree_ns PID: utime+stime+cutime+cstime of PID and all its live
# descendants, ns (10 ms ticks).
tree_ns() {
  local todo=("$1") p s sum=0 c
  while [ ${#todo[@]} -gt 0 ]; do
    p=${todo[0]}; todo=("${todo[@]:1}")
    s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    s=${s##*) }
    set -- $s
    sum=$((sum + ${12} + ${13} + ${14} + ${15}))
    for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do todo+=("$c"); done
  done
  echo $((sum * 1000000000 / HZ))
}

# ---- ports, start, stop ------------------------------------------------------
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 10000))
    [ -z "$(ss -Htan "( sport = :$p or dport = :$p )")" ] && { echo $p; return; }
  done
}

wait_port() { # port pid [tries of 50 ms]
  for _ in $(seq "${3:-200}"); do
    kill -0 "$2" 2>/dev/null || return 1
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

# in_cg NAME CMD...: exec CMD inside target NAME's cgroup, if any. Call it
# in a subshell, "(in_cg NAME CMD...) &": $! is then CMD's own pid.
in_cg() {
  local n=$1; shift
  if [ "$CG_KIND" != none ]; then
    CG[$n]=$CG_ROOT/$n
    mkdir -p "${CG[$n]}"
    exec sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh "${CG[$n]}" "$@"
  else
    exec "$@"
  fi
}

stop() { # name [seconds to wait before SIGKILL]
  local p=${PID[$1]}
  kill "$p" 2>/dev/null || true
  for _ in $(seq $(( ${2:-10} * 20 ))); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
  kill -9 "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  local keep=() q
  for q in "${PIDS[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
  PIDS=("${keep[@]}")
}

fail() { echo "run-queue.sh: $*" >&2; exit 1; }

# ---- the sink ----------------------------------------------------------------
SINK_OUT=$OUT/sink.count
start_sink() {
  local port pid
  for _ in 1 2 3; do
    port=$(free_port)
    "$SMTP_SINK" -c -u "$(id -un)" "127.0.0.1:$port" 4096 >"$SINK_OUT" 2>>"$OUT/sink.log" &
    pid=$!
    if wait_port "$port" "$pid"; then
      PID[sink]=$pid; PORT[sink]=$port; PIDS+=("$pid"); return 0
    fi
    kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  done
  fail "cannot start smtp-sink"
}
sink_count() {
  local c
  c=$(tail -c 200 "$SINK_OUT" | tr '\r' '\n' | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | tail -1)
  echo "${c:-0}"
}

# The poller: waits until the counter reaches WANT (or DEADLINE seconds),
# prints "DONE_NS COUNT" (time.time_ns(): the same clock as date +%s%N).
cat >"$OUT/waitcount.py" <<'EOF'
import os, re, sys, time
path, want, limit = sys.argv[1], int(sys.argv[2]), time.time() + float(sys.argv[3])
pat = re.compile(rb"mesg=(\d+)")
n = 0
with open(path, "rb") as f:
    while True:
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - 64))
        m = pat.findall(f.read())
        if m:
            n = int(m[-1])
        if n >= want or time.time() > limit:
            break
        time.sleep(0.01)
print(time.time_ns(), n, flush=True)
EOF

# ---- tern --------------------------------------------------------------------
write_tern_ini() { # file port queue_dir fsync next_hop_port
  cat >"$1" <<EOF
; generated by bench/run-queue.sh
[server]
workers = $WORKERS
max_connections = 10000
log = stderr

[listener bench]
url = smtp://127.0.0.1:$2

[delivery]
target = smtp
url = smtp://127.0.0.1:$5
queue = yes

[queue]
directory = $3
fsync = $4
concurrency = $CONCURRENCY
EOF
}

start_tern() { # name fsync next_hop_port
  local n=$1 port pid
  for _ in 1 2 3; do
    port=$(free_port)
    mkdir -p "$DATA/$n"
    write_tern_ini "$OUT/$n.ini" "$port" "$DATA/$n/queue" "$2" "$3"
    (in_cg "$n" "$TERN" serve -c "$OUT/$n.ini") 2>>"$OUT/$n.log" &
    pid=$!
    if wait_port "$port" "$pid"; then
      PID[$n]=$pid; PORT[$n]=$port; PIDS+=("$pid"); [ "$CG_KIND" = none ] || CG[$n]=$CG_ROOT/$n
      sleep 0.2; return 0
    fi
    kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  done
  tail -5 "$OUT/$n.log" >&2
  fail "cannot start $n"
}

# ---- Postfix -----------------------------------------------------------------
# start_postfix NAME NEXT_HOP_PORT: a private instance in $DATA/NAME.
start_postfix() {
  local n=$1 PF=$DATA/$1 hop=$2 port pid
  # (data/ is left to `postfix check`: it must belong to mail_owner)
  mkdir -p "$PF/conf" "$PF/queue"
  chmod 755 "$PF"
  for _ in 1 2 3; do
    port=$(free_port)
    cat >"$PF/conf/main.cf" <<EOF
# generated by bench/run-queue.sh: a private instance, nothing shared
compatibility_level = 3.6
config_directory = $PF/conf
queue_directory = $PF/queue
data_directory = $PF/data
command_directory = /usr/sbin
daemon_directory = $PFD
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.invalid
mydomain = invalid
myorigin = \$myhostname
# no local delivery: everything relays to the sink
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
local_transport = error:5.1.1 local delivery is disabled
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
# no DNS anywhere: no reverse lookup of clients, relayhost in brackets
smtpd_peername_lookup = no
smtp_host_lookup = native
smtp_dns_support_level = disabled
relayhost = [127.0.0.1]:$hop
# limits: 100 sessions from one client, 20 deliveries at once
smtpd_client_connection_count_limit = 0
default_process_limit = 300
smtp_destination_concurrency_limit = $CONCURRENCY
maillog_file = $PF/maillog
maillog_file_prefixes = /var, /dev/stdout, $PF
biff = no
EOF
    # chroot n everywhere (no copies of /etc in the queue directory)
    cat >"$PF/conf/master.cf" <<EOF
127.0.0.1:$port inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
EOF
    # creates the queue's subdirectories with their owners and modes
    /usr/sbin/postfix -c "$PF/conf" check ||
      { tail -5 "$PF/maillog" >&2; fail "postfix check failed"; }
    (in_cg "$n" "$PFD/master" -c "$PF/conf" -d) >>"$OUT/$n.log" 2>&1 &
    pid=$!
    if wait_port "$port" "$pid"; then
      PID[$n]=$pid; PORT[$n]=$port; PIDS+=("$pid")
      [ "$CG_KIND" = none ] || CG[$n]=$CG_ROOT/$n
      sleep 0.5; return 0
    fi
    kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  done
  tail -5 "$PF/maillog" >&2
  fail "cannot start postfix"
}
pf_queued() { # NAME [queue subdirectories]: files in them
  local d=$DATA/$1/queue; shift
  [ $# -gt 0 ] || set -- incoming active deferred maildrop hold
  (cd "$d" && find "$@" -type f | wc -l)
}

start_target() {
  case $1 in
    tern) start_tern tern yes "${PORT[sink]}" ;;
    tern-nosync) start_tern tern-nosync no "${PORT[sink]}" ;;
    postfix) start_postfix postfix "${PORT[sink]}" ;;
    *) fail "unknown target $1" ;;
  esac
}

# ---- one end-to-end run --------------------------------------------------------
run() { # target sessions round
  local t=$1 n=$2 r=$3 m c0 c1 wp t0 t1 t2 got cpu0 cpu1 log e2e acc us
  m=$(msgs "$n")
  c0=$(sink_count)
  log=$OUT/source.$t.$n.$r.txt
  "$PY" "$OUT/waitcount.py" "$SINK_OUT" $((c0 + m)) "$RUN_TIMEOUT" >"$OUT/wait.txt" &
  wp=$!
  sleep 0.1 # the poller has opened the file
  cpu0=$(cpu_ns "$t")
  t0=$(date +%s%N)
  timeout "$RUN_TIMEOUT" "$SMTP_SOURCE" -d -s "$n" -m "$m" -l 1024 -f "$FROM" -t "$RCPT" \
    "127.0.0.1:${PORT[$t]}" >"$log" 2>&1 ||
    { kill "$wp" 2>/dev/null; cat "$log" >&2; fail "smtp-source $t n=$n round $r failed"; }
  t1=$(date +%s%N)
  [ -s "$log" ] && { kill "$wp" 2>/dev/null; head -5 "$log" >&2; fail "smtp-source $t n=$n round $r: errors"; }
  wait "$wp" || true
  read -r t2 got <"$OUT/wait.txt"
  [ "$got" -ge $((c0 + m)) ] ||
    fail "$t n=$n round $r: the sink got $((got - c0)) of $m within ${RUN_TIMEOUT}s"
  sleep "$SETTLE"
  cpu1=$(cpu_ns "$t")
  c1=$(sink_count)
  [ "$c1" = $((c0 + m)) ] ||
    fail "$t n=$n round $r: sent $m, the sink counted $((c1 - c0)) (duplicates?)"
  if [ "$t" = postfix ]; then
    local q; q=$(pf_queued postfix)
    [ "$q" = 0 ] || fail "postfix n=$n round $r: $q files left in its queue"
  fi
  e2e=$(awk -v m="$m" -v d=$((t2 - t0)) 'BEGIN {printf "%.1f", m / (d / 1e9)}')
  acc=$(awk -v m="$m" -v d=$((t1 - t0)) 'BEGIN {printf "%.1f", m / (d / 1e9)}')
  us=$(( (cpu1 - cpu0) / 1000 / m ))
  local lag=$(( (t2 - t1) / 1000000 )); [ "$lag" -ge 0 ] || lag=0
  printf '  %-11s n=%-3s round %s: %8s msg/s end to end (accept %8s msg/s; all at the sink %5d ms after smtp-source exited)  CPU %5s us/msg\n' \
    "$t" "$n" "$r" "$e2e" "$acc" "$lag" "$us"
  echo "run $t $n $r $e2e $acc $us $m" >>"$RES"
}

# One short run per target under strace -c -f attached to the running
# target (tern: all threads; postfix: master, and every child it forks
# from now on): fsync + fdatasync and all system calls, per message.
strace_run() { # target sessions
  local t=$1 n=$2 m c0 tr sp pids p
  m=$(( $(msgs "$n") / 5 )); [ "$m" -ge 200 ] || m=200
  tr=$OUT/strace.$t.$n.txt
  c0=$(sink_count)
  pids=(-p "${PID[$t]}")
  if [ "$t" = postfix ]; then
    # the daemons already running (qmgr, smtpd, smtp, cleanup, ...) too
    for p in $(cat /proc/"${PID[$t]}"/task/*/children 2>/dev/null); do pids+=(-p "$p"); done
  fi
  strace -f -c -o "$tr" "${pids[@]}" 2>>"$OUT/strace.log" &
  sp=$!
  sleep 1 # attached
  timeout "$RUN_TIMEOUT" "$SMTP_SOURCE" -d -s "$n" -m "$m" -l 1024 -f "$FROM" -t "$RCPT" \
    "127.0.0.1:${PORT[$t]}" >"$OUT/strace.source.$t.$n.txt" 2>&1 ||
    fail "strace run $t n=$n: smtp-source failed"
  "$PY" "$OUT/waitcount.py" "$SINK_OUT" $((c0 + m)) "$RUN_TIMEOUT" >/dev/null
  sleep "$SETTLE"
  kill -INT "$sp" 2>/dev/null || true
  wait "$sp" 2>/dev/null || true
  awk -v t="$t" -v n="$n" -v m="$m" '
    $NF == "fsync" || $NF == "fdatasync" { fs += $4 }
    $NF == "total" { tot = $4 }
    END { printf "strace %s %s %d %d %d\n", t, n, m, fs, tot }' "$tr" >>"$RES"
  tail -1 "$RES" | awk '{printf "  strace %-11s n=%-3s: %s msgs, %s fsync+fdatasync (%.2f per msg), %s system calls (%.1f per msg)\n", $2, $3, $4, $5, $5 / $4, $6, $6 / $4}'
}

# ---- part c/d: a big queue, next hop down ------------------------------------
greet() { # port: succeeds when a 220 line is read there
  (exec 3<>"/dev/tcp/127.0.0.1/$1" && read -t 5 -r line <&3 && [ "${line:0:3}" = 220 ]) 2>/dev/null
}
# restart_timed NAME CMD...: exec CMD (in NAME's cgroup) and time it from
# the exec to the first 220 greeting on PORT[NAME]; records KIND restart_ms.
restart_timed() {
  local n=$1 kind=$2 t0 t1 ok=0 deadline; shift 2
  t0=$(date +%s%N)
  (in_cg "$n" "$@") 2>>"$OUT/$n.log" >>"$OUT/$n.log" &
  PID[$n]=$!; PIDS+=("${PID[$n]}")
  deadline=$(( $(date +%s) + 300 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    kill -0 "${PID[$n]}" 2>/dev/null || break
    if greet "${PORT[$n]}"; then ok=1; break; fi
    sleep 0.005
  done
  t1=$(date +%s%N)
  [ $ok = 1 ] || { tail -5 "$OUT/$n.log" >&2; fail "$n did not come back after a restart with $QUEUED queued"; }
  echo "$kind restart_ms $(( (t1 - t0) / 1000000 ))" >>"$RES"
}
# fill NAME KIND: QUEUED messages over 100 sessions (1,000 per session at
# 100,000: well under tern's max_commands), records KIND ingest msg/s.
fill() {
  local n=$1 kind=$2 t0 t1
  t0=$(date +%s%N)
  timeout 3600 "$SMTP_SOURCE" -d -s 100 -m "$QUEUED" -l 1024 -f "$FROM" -t "$RCPT" \
    "127.0.0.1:${PORT[$n]}" >"$OUT/source.$n.txt" 2>&1 || fail "filling $n failed"
  t1=$(date +%s%N)
  [ -s "$OUT/source.$n.txt" ] && { head -5 "$OUT/source.$n.txt" >&2; fail "filling $n: errors"; }
  echo "$kind ingest $(awk -v m="$QUEUED" -v d=$((t1 - t0)) 'BEGIN {printf "%.1f", m / (d / 1e9)}')" >>"$RES"
  tail -1 "$RES" | awk -v q="$QUEUED" -v s="$(awk -v d=$((t1 - t0)) 'BEGIN {printf "%.1f", d / 1e9}')" \
    '{printf "  %s: %d messages in %s s (%s msg/s), next hop down\n", $1, q, s, $3}'
}
# timed_list NAME KIND TAG: the queue listed as text and as JSON, timed;
# records KIND list_TAG_FORMAT MS COUNT and warns when COUNT != QUEUED.
timed_list() {
  local n=$1 kind=$2 tag=$3 t0 t1 f got cmd
  for f in text json; do
    case $kind:$f in
      tern:text) cmd=("$TERN" queue list -c "$OUT/$n.ini") ;;
      tern:json) cmd=("$TERN" queue list --json -c "$OUT/$n.ini") ;;
      postfix:text) cmd=(/usr/sbin/postqueue -c "$DATA/$n/conf" -p) ;;
      postfix:json) cmd=(/usr/sbin/postqueue -c "$DATA/$n/conf" -j) ;;
    esac
    t0=$(date +%s%N)
    timeout 600 "${cmd[@]}" >"$OUT/list.$n.$tag.$f" 2>"$OUT/list.$n.$tag.$f.err" ||
      { head -3 "$OUT/list.$n.$tag.$f.err" >&2; fail "${cmd[*]} ($tag) failed"; }
    t1=$(date +%s%N)
    case $kind:$f in
      tern:text) got=$(tail -1 "$OUT/list.$n.$tag.$f" | sed -n 's/^-- \([0-9]*\) message.*/\1/p') ;;
      postfix:text) got=$(tail -1 "$OUT/list.$n.$tag.$f" | sed -n 's/.* in \([0-9]*\) Request.*/\1/p') ;;
      *:json) got=$(grep -c '"queue_id"\|"id"' "$OUT/list.$n.$tag.$f" || true) ;;
    esac
    [ "${got:-0}" = "$QUEUED" ] ||
      echo "  warning: ${cmd[*]} ($tag) shows ${got:-?} messages, not $QUEUED" >&2
    echo "$kind list_${tag}_$f $(( (t1 - t0) / 1000000 )) ${got:-0}" >>"$RES"
  done
}
rss_kb() { # PID: memory of PID and all its descendants, KiB: the sum of
  # their Pss (shared pages split between the processes that map them;
  # summing VmRSS over ~100 smtpd processes counts libc 100 times), or
  # VmRSS without smaps_rollup
  local todo=("$1") p sum=0 r c
  while [ ${#todo[@]} -gt 0 ]; do
    p=${todo[0]}; todo=("${todo[@]:1}")
    if [ -r "/proc/$p/smaps_rollup" ]; then
      r=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null) || continue
    else
      r=$(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null) || continue
    fi
    sum=$((sum + ${r:-0}))
    for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do todo+=("$c"); done
  done
  echo $sum
}

# tern: fill with the next hop down, list, stop, list, restart, list.
restart_part() {
  local n=tern-big down t0 t1
  down=$(free_port) # nothing listens there: connection refused, deferred
  echo "== part c/d: $QUEUED messages into tern, next hop 127.0.0.1:$down (closed)"
  start_tern "$n" yes "$down"
  fill "$n" tern
  sleep 2
  echo "tern rss_kb $(rss_kb "${PID[$n]}")" >>"$RES"
  timed_list "$n" tern daemon
  t0=$(date +%s%N); stop "$n" 120; t1=$(date +%s%N)
  echo "tern stop_ms $(( (t1 - t0) / 1000000 ))" >>"$RES"
  timed_list "$n" tern offline
  restart_timed "$n" tern "$TERN" serve -c "$OUT/$n.ini"
  sleep 2
  echo "tern rss2_kb $(rss_kb "${PID[$n]}")" >>"$RES"
  timed_list "$n" tern daemon2
  stop "$n" 120
  awk '$1 == "tern" {print "  " $0}' "$RES"
}

# The same for the private Postfix (PF_BIG=1): postqueue -p / -j.
pf_big_part() {
  local n=postfix-big down t0 t1 q deadline
  down=$(free_port)
  echo "== part c/d, Postfix: $QUEUED messages, relayhost 127.0.0.1:$down (closed)"
  start_postfix "$n" "$down"
  fill "$n" postfix
  # until qmgr has moved everything to deferred/
  deadline=$(( $(date +%s) + 1200 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    q=$(pf_queued "$n" incoming active maildrop)
    [ "$q" = 0 ] && break
    sleep 1
  done
  echo "postfix settled_deferred $(pf_queued "$n" deferred)" >>"$RES"
  echo "postfix rss_kb $(rss_kb "${PID[$n]}")" >>"$RES"
  timed_list "$n" postfix daemon
  t0=$(date +%s%N); stop "$n" 120; t1=$(date +%s%N)
  echo "postfix stop_ms $(( (t1 - t0) / 1000000 ))" >>"$RES"
  timed_list "$n" postfix offline
  restart_timed "$n" postfix "$PFD/master" -c "$DATA/$n/conf" -d
  sleep 2
  echo "postfix rss2_kb $(rss_kb "${PID[$n]}")" >>"$RES"
  timed_list "$n" postfix daemon2
  stop "$n" 120
  awk '$1 == "postfix" {print "  " $0}' "$RES"
}

# ---- main ----------------------------------------------------------------------
echo "run-queue.sh: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  $(uname -sr); queues in $DATA"
echo "  filesystem: $(df -T "$DATA" | awk 'NR == 2 {print $2 " on " $1 ", mounted on " $7}') (df -T)"
echo "  tern $("$TERN" --version 2>/dev/null | head -1 || echo ?), workers $WORKERS; Postfix $(/usr/sbin/postconf -d -h mail_version 2>/dev/null || echo ?)"
echo "  CPU: $(case $CG_KIND in v1) echo "cgroup v1 cpuacct.usage per target" ;; v2) echo "cgroup v2 cpu.stat per target" ;; *) echo "/proc (schedstat; postfix: tree of utime+stime+cutime+cstime)" ;; esac)"
echo "  1024-octet messages, rounds $ROUNDS, sessions $SESSIONS, targets $TARGETS; raw results in $OUT${KEEP:+ (kept)}"

start_sink
for t in $TARGETS; do start_target "$t"; done
# warmup TARGET SESSIONS: one unrecorded run. Postfix spawns its daemons
# on demand (an smtpd per session), tern opens its store and connections;
# neither start-up belongs in round 1.
warmup() {
  local t=$1 n=$2 m c0 got
  m=$(msgs "$n"); [ "$m" -le "$WARMUP" ] || m=$WARMUP
  c0=$(sink_count)
  timeout "$RUN_TIMEOUT" "$SMTP_SOURCE" -d -s "$n" -m "$m" -l 1024 -f "$FROM" -t "$RCPT" \
    "127.0.0.1:${PORT[$t]}" >"$OUT/warmup.$t.$n.txt" 2>&1 || fail "warm-up $t n=$n failed"
  "$PY" "$OUT/waitcount.py" "$SINK_OUT" $((c0 + m)) "$RUN_TIMEOUT" >"$OUT/wait.txt"
  read -r _ got <"$OUT/wait.txt"
  [ "$got" -ge $((c0 + m)) ] || fail "warm-up $t n=$n: the sink got $((got - c0)) of $m"
}

for n in $SESSIONS; do
  echo "== $n sessions, $(msgs "$n") messages per run"
  for t in $TARGETS; do warmup "$t" "$n"; done
  for r in $(seq "$ROUNDS"); do
    if [ "$SECONDS" -gt "$BUDGET" ]; then echo "  time budget reached" >&2; break; fi
    for t in $TARGETS; do run "$t" "$n" "$r"; done
  done
  if [ "$STRACE" = 1 ]; then
    for t in $TARGETS; do strace_run "$t" "$n"; done
  fi
done
for t in $TARGETS; do stop "$t" 30; done
[ "$RESTART" = 1 ] && restart_part
[ "${PF_BIG:-0}" = 1 ] && pf_big_part
stop sink

echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
awk -v targets="$TARGETS" -v queued="$QUEUED" '
  function med(key,   n, i, j, t, v) {
    n = cnt[key]; if (n == 0) return ""
    for (i = 1; i <= n; i++) v[i] = val[key, i]
    for (i = 2; i <= n; i++) { t = v[i]; for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
    return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
  }
  function all(key,   i, s) {
    for (i = 1; i <= cnt[key]; i++) s = s (i > 1 ? " / " : "") sprintf("%.0f", val[key, i])
    return s
  }
  function add(key, v) { val[key, ++cnt[key]] = v }
  # a row of part c/d: raw value, or ms shown as s with the count listed
  function bigcell(w, k, how) {
    if (!((w, k) in big)) return "-"
    if (how == "s") return sprintf("%.2f s (%s msgs)", big[w, k] / 1000, bign[w, k])
    if (how == "ms") return sprintf("%.3f s", big[w, k] / 1000)
    return big[w, k]
  }
  function bigrow(k, label, how) {
    if (!(("tern", k) in big) && !(("postfix", k) in big)) return
    printf "| %s | %s | %s |\n", label, bigcell("tern", k, how), bigcell("postfix", k, how)
  }
  function cell(key) { return cnt[key] ? sprintf("%.0f (%s)", med(key), all(key)) : "-" }
  $1 == "run" {
    add("e2e" SUBSEP $2 SUBSEP $3, $5); add("acc" SUBSEP $2 SUBSEP $3, $6)
    add("cpu" SUBSEP $2 SUBSEP $3, $7)
    if (!($3 in seen)) { seen[$3] = 1; ns[++nn] = $3 }
  }
  $1 == "strace" { st[$2, $3] = $0; have_st = 1 }
  ($1 == "tern" || $1 == "postfix") && NF >= 3 { big[$1, $2] = $3; bign[$1, $2] = $4; have_big = 1 }
  END {
    print "End to end (smtp-source -> server -> smtp-sink), messages/s, median (rounds):"
    print ""
    print "| sessions | tern | postfix | tern/postfix | tern fsync=no | CPU us/msg tern | postfix | tern/postfix | tern fsync=no |"
    print "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for (i = 1; i <= nn; i++) {
      n = ns[i]
      te = med("e2e" SUBSEP "tern" SUBSEP n); pe = med("e2e" SUBSEP "postfix" SUBSEP n)
      tc = med("cpu" SUBSEP "tern" SUBSEP n); pc = med("cpu" SUBSEP "postfix" SUBSEP n)
      printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", n,
        cell("e2e" SUBSEP "tern" SUBSEP n), cell("e2e" SUBSEP "postfix" SUBSEP n),
        (te != "" && pe > 0 ? sprintf("%.2f", te / pe) : "-"),
        cell("e2e" SUBSEP "tern-nosync" SUBSEP n),
        cell("cpu" SUBSEP "tern" SUBSEP n), cell("cpu" SUBSEP "postfix" SUBSEP n),
        (tc != "" && pc > 0 ? sprintf("%.2f", tc / pc) : "-"),
        cell("cpu" SUBSEP "tern-nosync" SUBSEP n)
    }
    print ""
    print "Accept rate (messages / smtp-source wall time; the server answered every message, not yet delivered):"
    print ""
    print "| sessions | tern | postfix | tern fsync=no |"
    print "|---:|---:|---:|---:|"
    for (i = 1; i <= nn; i++) {
      n = ns[i]
      printf "| %s | %s | %s | %s |\n", n, cell("acc" SUBSEP "tern" SUBSEP n),
        cell("acc" SUBSEP "postfix" SUBSEP n), cell("acc" SUBSEP "tern-nosync" SUBSEP n)
    }
    n = 20
    te = med("e2e" SUBSEP "tern" SUBSEP n); pe = med("e2e" SUBSEP "postfix" SUBSEP n)
    tc = med("cpu" SUBSEP "tern" SUBSEP n); pc = med("cpu" SUBSEP "postfix" SUBSEP n)
    if (te != "" && pe > 0 && pc > 0) {
      print ""
      printf "Targets at 20 sessions: end-to-end msgs/s tern/postfix %.2f (target >= 4: %s); CPU per message tern/postfix %.2f (target <= 0.25: %s)\n",
        te / pe, (te / pe >= 4 ? "met" : "MISSED"), tc / pc, (tc / pc <= 0.25 ? "met" : "MISSED")
    }
    if (have_st) {
      print ""
      print "| strace -c -f (one short run) | sessions | messages | fsync+fdatasync | per message | system calls per message |"
      print "|---|---:|---:|---:|---:|---:|"
      nt = split(targets, tl, " ")
      for (i = 1; i <= nn; i++) for (j = 1; j <= nt; j++) {
        if (!((tl[j], ns[i]) in st)) continue
        split(st[tl[j], ns[i]], f, " ")
        printf "| %s | %s | %d | %d | %.2f | %.1f |\n", f[2], f[3], f[4], f[5], f[5] / f[4], f[6] / f[4] }
    }
    if (have_big) {
      print ""
      printf "With %s messages queued, next hop down:\n\n", queued
      print "| figure | tern | postfix |"
      print "|---|---:|---:|"
      bigrow("ingest", "ingest (smtp-source -s 100), msg/s", "r")
      bigrow("settled_deferred", "messages in deferred/ after ingest", "r")
      bigrow("rss_kb", "memory (Pss, KiB; Postfix: master and all its daemons)", "r")
      bigrow("list_daemon_text", "list (tern queue list / postqueue -p), daemon running", "s")
      bigrow("list_daemon_json", "list as JSON (--json / postqueue -j), daemon running", "s")
      bigrow("stop_ms", "SIGTERM to exit", "ms")
      bigrow("list_offline_text", "list, daemon stopped", "s")
      bigrow("list_offline_json", "list as JSON, daemon stopped", "s")
      bigrow("restart_ms", "restart: exec to the first 220 greeting", "ms")
      bigrow("rss2_kb", "memory after the restart (Pss, KiB)", "r")
      bigrow("list_daemon2_text", "list after the restart", "s")
      bigrow("list_daemon2_json", "list as JSON after the restart", "s")
    }
  }' "$RES"
echo
echo "Figures go in bench/README.md, section \"Queue (run-queue.sh)\"."
exit 0
