#!/usr/bin/env bash
# run-serve.sh — `tern serve` delivering to a Maildir, durable (fsync = yes)
# and not (fsync = no), beside examples/sink (discards everything), on
# loopback, interleaved rounds. Builds nothing: give it a build directory
# that holds src/cli/tern and examples/sink (RelWithDebInfo).
#
#   bench/run-serve.sh [BUILD_DIR]        (default build/)
#
# Environment: ROUNDS (2), SESSIONS ("1 20 200"), DURATION (10: --duration
#   cap of every tern bench run, seconds), SMTP_SOURCE (/usr/sbin/smtp-source),
#   PER_CONN (1000), STRACE (1: one short strace -f run of B per session
#   count to count file fsyncs and barriers (syncfs); 0 to skip), DATA_DIR (where
#   the maildirs go; default under BUILD_DIR unless that is tmpfs, else
#   /var/tmp),
#   KEEP (directory for the raw results and logs; default temporary, removed),
#   M_SINK_<N>, M_SYNC_<N>, M_NOSYNC_<N> (messages per run at N sessions),
#   BASE (a second build directory, e.g. of an older commit: its tern is
#   run as target B0, fsync = yes, beside B in every round, so that
#   before/after figures come from the same run and the same load).
#
# Targets (each on its own free 127.0.0.1 port, children of this script):
#   A  sink      examples/sink smtp://127.0.0.1:P --workers 1 --quiet
#   B  fsync=yes tern serve -c GEN.ini   (one listener, maildir on disk,
#                workers = 1, fsync = yes)   — started fresh for each run
#   C  fsync=no  the same with fsync = no    — started fresh for each run
#   B0 base      BASE's tern, as B (only with BASE)
# Load, per round and session count N (order A B C A B C ...):
#   tern bench --server smtp://127.0.0.1:P --sessions N --messages M
#              --size 1024 --duration DURATION --per-connection PER_CONN
#   (PER_CONN 1000: a tern session closes after 10000 commands)
#   and at N = 20 also, for A and B:
#   smtp-source -s 20 -m M -l 1024 -d 127.0.0.1:P   (timed by this script;
#   M = the bench count / 4 for A, / 2 for B: lock-step is slower)
# Checks: every tern bench run must report failed 0 and ok = sent; for B and
# C the number of files in new/ must equal ok (smtp-source: M); anything else
# stops the script with an error. Each run has its own maildir; all are
# removed at the end (see RUN below).
# Output: a table of median messages/s (rounds in brackets), the ratio
# B/C, server CPU per message, and the fsync/syncfs counts from strace.
set -euo pipefail

BUILD=${1:-build}
TERN=$BUILD/src/cli/tern
SINK=$BUILD/examples/sink
SMTP_SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
ROUNDS=${ROUNDS:-2}
SESSIONS=${SESSIONS:-"1 20 200"}
DURATION=${DURATION:-10}
STRACE=${STRACE:-1}
# A tern session closes after 10000 commands (max_commands, 421 4.7.0):
# reconnect every PER_CONN messages (4 commands each).
PER_CONN=${PER_CONN:-1000}

BASE_TERN=${BASE:+$BASE/src/cli/tern}
for f in "$TERN" "$SINK" "$SMTP_SOURCE" ${BASE_TERN:+"$BASE_TERN"}; do
  [ -x "$f" ] || { echo "run-serve.sh: $f missing (build first)" >&2; exit 2; }
done
if [ "$STRACE" = 1 ] && ! command -v strace >/dev/null; then
  echo "run-serve.sh: strace not found: fsync counts skipped" >&2
  STRACE=0
fi

# Messages per run (about 2-10 s each on a small VM; --duration caps bench).
m_default() { # kind sessions
  case $1:$2 in
    sink:1) echo 20000 ;; sink:*) echo 40000 ;;
    sync:1|base:1) echo 3000 ;; sync:*|base:*) echo 8000 ;;
    nosync:1) echo 4000 ;; nosync:*) echo 10000 ;;
  esac
}
msgs() { # kind sessions
  local v="M_${1^^}_$2"
  echo "${!v:-$(m_default "$1" "$2")}"
}

if [ -n "${KEEP:-}" ]; then
  OUT=$KEEP; mkdir -p "$OUT"
else
  OUT=$(mktemp -d /tmp/run-serve.XXXXXX)
fi
RES=$OUT/results
: >"$RES"

# The maildirs go on a real disk: fsync on tmpfs costs nothing.
is_mem_fs() { case $(stat -f -c %T "$1") in tmpfs|ramfs) return 0 ;; esac; return 1; }
if [ -n "${DATA_DIR:-}" ]; then
  DATA_BASE=$DATA_DIR
elif ! is_mem_fs "$BUILD"; then
  DATA_BASE=$BUILD
else
  DATA_BASE=/var/tmp
fi
mkdir -p "$DATA_BASE"
DATA=$(mktemp -d "$DATA_BASE/run-serve-data.XXXXXX")
if is_mem_fs "$DATA"; then
  echo "run-serve.sh: $DATA is on $(stat -f -c %T "$DATA"): use DATA_DIR=<dir on disk>" >&2
  rm -rf "$DATA"; exit 2
fi

ulimit -n "$(ulimit -Hn)"

declare -A PID PORT
# Each run delivers into its own maildir, all removed at the end: removing
# thousands of files between runs made the next run's creates pay for them
# (ext4 without a journal skips inodes freed in the last 30 s, scanning
# the inode table: recently_deleted() was half of the server's CPU), and
# unevenly, depending on which target ran after which.
RUN=0
MAIL=
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DATA"
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

write_ini() { # file port maildir fsync
  cat >"$1" <<EOF
; generated by bench/run-serve.sh
[server]
workers = 1
max_connections = 10000
log = stderr

[listener bench]
url = smtp://127.0.0.1:$2

[delivery]
target = maildir
maildir = $3
fsync = $4
EOF
}

# start NAME KIND [PREFIX...]: KIND sink|sync|nosync; PREFIX wraps the
# server command (strace).
start() {
  local n=$1 kind=$2 port pid try
  shift 2
  for try in 1 2 3; do
    port=$(free_port)
    case $kind in
      sink) "$SINK" "smtp://127.0.0.1:$port" --workers 1 --quiet \
              2>>"$OUT/$n.log" & ;;
      sync|nosync|base)
        RUN=$((RUN + 1)); MAIL=$DATA/mail.$RUN
        write_ini "$OUT/$kind.ini" "$port" "$MAIL" \
          "$([ "$kind" = nosync ] && echo no || echo yes)"
        "$@" "$([ "$kind" = base ] && echo "$BASE_TERN" || echo "$TERN")" \
          serve -c "$OUT/$kind.ini" 2>>"$OUT/$n.log" & ;;
    esac
    pid=$!
    if wait_port "$port" "$pid"; then
      PID[$n]=$pid; PORT[$n]=$port; PIDS+=("$pid")
      sleep 0.2
      return 0
    fi
    kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  done
  echo "run-serve.sh: cannot start $n" >&2; exit 1
}

stop() { # name
  local p=${PID[$1]} c
  if [ "$1" = strace ]; then
    # SIGTERM to strace would detach and leave tern running: stop tern,
    # strace ends with it.
    for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do
      kill "$c" 2>/dev/null || true
    done
  else
    kill "$p" 2>/dev/null || true
  fi
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
  kill -9 "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  local keep=() q
  for q in "${PIDS[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
  PIDS=("${keep[@]}")
}

cpu_ns() { # on-CPU time of a process, all threads (schedstat; else ticks)
  local t sum=0 a
  if [ -r "/proc/$1/schedstat" ]; then
    for t in /proc/"$1"/task/*/schedstat; do
      read -r a _ <"$t" 2>/dev/null || continue
      sum=$((sum + a))
    done
    echo $sum
  else
    local s; s=$(<"/proc/$1/stat"); s=${s##*) }; set -- $s
    echo $(( (${12} + ${13}) * 1000000000 / $(getconf CLK_TCK) ))
  fi
}

count_new() { find "$MAIL/new" -type f | wc -l; }

fail() { echo "run-serve.sh: $*" >&2; exit 1; }

# One tern bench run against target T (sink|sync|nosync) at N sessions.
bench_run() { # target sessions round
  local t=$1 n=$2 r=$3 m port name log ok sent failed rate cpu0 cpu1 files
  m=$(msgs "$t" "$n")
  name=$t
  if [ "$t" = sink ]; then
    port=${PORT[sink]}
  else
    start "$t" "$t"; port=${PORT[$t]}
  fi
  log=$OUT/bench.$t.$n.$r.txt
  cpu0=$(cpu_ns "${PID[$name]}")
  "$TERN" bench --server "smtp://127.0.0.1:$port" --sessions "$n" \
    --messages "$m" --size 1024 --duration "$DURATION" \
    --per-connection "$PER_CONN" --quiet >"$log" 2>&1 ||
    { cat "$log" >&2; fail "tern bench $t n=$n round $r failed"; }
  cpu1=$(cpu_ns "${PID[$name]}")
  read -r sent ok failed < <(awk '/^messages:/ {print $3, $5, $7}' "$log")
  rate=$(awk '/^rate:/ {print $2}' "$log")
  [ "$failed" = 0 ] && [ "$ok" = "$sent" ] && [ "$ok" -gt 0 ] ||
    fail "$t n=$n round $r: sent $sent ok $ok failed $failed"
  files=-
  if [ "$t" != sink ]; then
    stop "$t"
    files=$(count_new)
    [ "$files" = "$ok" ] ||
      fail "$t n=$n round $r: $ok accepted, $files files in new/ (lost mail)"
  fi
  [ "$sent" -lt "$m" ] && echo "  (capped by --duration: $sent of $m)"
  printf '  %-7s n=%-3s round %s: %8s msg/s  %6s msgs  files %s  server CPU %s us/msg\n' \
    "$t" "$n" "$r" "$rate" "$ok" "$files" $(( (cpu1 - cpu0) / 1000 / ok ))
  echo "bench $t $n $r $rate $ok $(( (cpu1 - cpu0) / 1000 / ok ))" >>"$RES"
}

# smtp-source at N sessions against sink or sync, timed here.
source_run() { # target sessions round
  local t=$1 n=$2 r=$3 m port t0 t1 rate files=- log
  m=$(msgs "$t" "$n")
  if [ "$t" = sink ]; then m=$((m / 4)); else m=$((m / 2)); fi # lock-step: slower
  if [ "$t" = sink ]; then port=${PORT[sink]}; else start "$t" "$t"; port=${PORT[$t]}; fi
  log=$OUT/source.$t.$n.$r.txt
  t0=$(date +%s%N)
  timeout 120 "$SMTP_SOURCE" -s "$n" -m "$m" -l 1024 -d "127.0.0.1:$port" \
    >"$log" 2>&1 || { cat "$log" >&2; fail "smtp-source $t n=$n round $r failed"; }
  t1=$(date +%s%N)
  [ -s "$log" ] && { cat "$log" >&2; fail "smtp-source $t n=$n round $r: errors"; }
  rate=$(awk -v m="$m" -v d=$((t1 - t0)) 'BEGIN {printf "%.1f", m / (d / 1e9)}')
  if [ "$t" != sink ]; then
    stop "$t"
    files=$(count_new)
    [ "$files" = "$m" ] ||
      fail "smtp-source $t n=$n round $r: sent $m, $files files in new/"
  fi
  printf '  %-7s n=%-3s round %s: %8s msg/s  %6s msgs  files %s  (smtp-source)\n' \
    "$t" "$n" "$r" "$rate" "$m" "$files"
  echo "source $t $n $r $rate $m -" >>"$RES"
}

# strace one short B run: file fsyncs vs barriers (syncfs, or an fsync of
# new/ from older builds), and how many ran at once.
strace_run() { # sessions
  local n=$1 m tr log ok files
  m=$(( n == 1 ? 300 : 2000 ))
  tr=$OUT/strace.$n.txt
  start strace sync strace -f -y -ttt -T -e trace=fsync,fdatasync,syncfs -o "$tr"
  log=$OUT/bench.strace.$n.txt
  "$TERN" bench --server "smtp://127.0.0.1:${PORT[strace]}" --sessions "$n" \
    --messages "$m" --size 1024 --duration "$DURATION" \
    --per-connection "$PER_CONN" --quiet >"$log" 2>&1 ||
    { cat "$log" >&2; fail "strace run n=$n failed"; }
  stop strace
  ok=$(awk '/^messages:/ {print $5}' "$log")
  files=$(count_new)
  [ "$files" = "$ok" ] || fail "strace run n=$n: $ok accepted, $files in new/"
  # Lines: "PID T fsync(FD</path>) = 0 <dur>", or split into
  # "<unfinished ...>" and "<... fsync resumed>) = 0 <dur>" (T = end).
  # One line per call: kind (dir = a barrier: syncfs or new/, file),
  # start, end.
  awk '
    / fsync\(| fdatasync\(| syncfs\(/ {
      dir = ($0 ~ /\/new>/ || $0 ~ / syncfs\(/) ? "dir" : ($0 ~ /\/mail\/tmp\//) ? "file" : "other"
      if ($0 ~ /unfinished/) { kind[$1] = dir; next }
    }
    / fsync\(| fdatasync\(| syncfs\(|resumed>/ {
      if ($0 ~ /resumed>/) dir = kind[$1]
      if (!match($0, /<[0-9.]+>$/)) next
      d = substr($0, RSTART + 1, RLENGTH - 2) + 0
      end = ($0 ~ /resumed>/) ? $2 + 0 : $2 + d
      printf "%s %.6f %.6f\n", dir, end - d, end
    }' "$tr" >"$tr.fs"
  # counts, mean in flight (busy time / span), most in flight at once
  { awk '{print $2, 1; print $3, -1}' "$tr.fs" | sort -g -k1,1 -k2,2n |
      awk '{cur += $2; if (cur > mx) mx = cur} END {print "max", mx + 0}'
    cat "$tr.fs"; } |
    awk -v n="$n" -v ok="$ok" '
      $1 == "max" { mx = $2; next }
      { if ($1 == "dir") nd++; else if ($1 == "file") nf++; busy += $3 - $2
        if (t0 == "" || $2 < t0) t0 = $2; if ($3 > t1) t1 = $3 }
      END { printf "strace %s %d %d %d %.2f %d\n", n, ok, nf, nd,
              (t1 > t0 ? busy / (t1 - t0) : 0), mx }' >>"$RES"
  tail -1 "$RES" | awk '{printf "  strace n=%s: %s msgs, %s file fsyncs, %s barriers (%.2f per msg), mean %s / max %s in flight\n", $2, $3, $4, $5, $5 / $3, $6, $7}'
}

echo "run-serve.sh: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  $(uname -sr); maildirs in $DATA"
echo "  filesystem: $(stat -f -c %T "$DATA") (stat -f); $(df -T "$DATA" | awk 'NR == 2 {print $2 " on " $1 ", mounted on " $7}') (df -T)"
mnt=$(df --output=target "$DATA" | tail -1)
echo "  mount options: $(awk -v m="$mnt" '$2 == m {print $4}' /proc/mounts | tail -1)"
echo "  messages 1024 octets, rounds $ROUNDS, --duration $DURATION; raw results in $OUT${KEEP:+ (kept)}"

start sink sink
for n in $SESSIONS; do
  echo "== $n sessions"
  for r in $(seq "$ROUNDS"); do
    for t in sink sync nosync ${BASE:+base}; do bench_run "$t" "$n" "$r"; done
    if [ "$n" = 20 ]; then
      source_run sink "$n" "$r"
      source_run sync "$n" "$r"
    fi
  done
  [ "$STRACE" = 1 ] && strace_run "$n"
done
stop sink

echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
# Medians over the rounds (and every round in brackets).
awk '
  function med(key,   n, i, j, t, v) {
    n = cnt[key]; if (n == 0) return "-"
    for (i = 1; i <= n; i++) v[i] = val[key, i]
    for (i = 2; i <= n; i++) { t = v[i]; for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
    return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
  }
  function all(key,   i, s) {
    for (i = 1; i <= cnt[key]; i++) s = s (i > 1 ? " / " : "") sprintf("%.0f", val[key, i])
    return s
  }
  $1 == "bench" && $2 == "base" { hb = 1 }
  $1 == "bench" || $1 == "source" {
    k = $1 SUBSEP $2 SUBSEP $3; val[k, ++cnt[k]] = $5
    if ($1 == "bench") { c = "cpu" SUBSEP $2 SUBSEP $3; val[c, ++cnt[c]] = $7 }
    if (!($3 in seen)) { seen[$3] = 1; ns[++nn] = $3 }
  }
  $1 == "strace" { have_strace = 1; sf[$2] = $4; sd[$2] = $5; sm[$2] = $3; sc[$2] = $6; sx[$2] = $7 }
  END {
    print "| sessions | A sink | B fsync=yes | C fsync=no | B/C | B/A | server CPU us/msg A / B / C |" (hb ? " B0 base | CPU us/msg B0 |" : "")
    print "|---:|---:|---:|---:|---:|---:|---:|" (hb ? "---:|---:|" : "")
    for (i = 1; i <= nn; i++) {
      n = ns[i]
      a = med("bench" SUBSEP "sink" SUBSEP n); b = med("bench" SUBSEP "sync" SUBSEP n)
      c = med("bench" SUBSEP "nosync" SUBSEP n)
      printf "| %s | %.0f (%s) | %.0f (%s) | %.0f (%s) | %.2f | %.3f | %.0f / %.0f / %.0f |", n,
        a, all("bench" SUBSEP "sink" SUBSEP n), b, all("bench" SUBSEP "sync" SUBSEP n),
        c, all("bench" SUBSEP "nosync" SUBSEP n), (c > 0 ? b / c : 0), (a > 0 ? b / a : 0),
        med("cpu" SUBSEP "sink" SUBSEP n), med("cpu" SUBSEP "sync" SUBSEP n),
        med("cpu" SUBSEP "nosync" SUBSEP n)
      if (hb)
        printf " %.0f (%s) | %s (%s) |", med("bench" SUBSEP "base" SUBSEP n),
          all("bench" SUBSEP "base" SUBSEP n), med("cpu" SUBSEP "base" SUBSEP n),
          all("cpu" SUBSEP "base" SUBSEP n)
      printf "\n"
    }
    for (i = 1; i <= nn; i++) {
      n = ns[i]
      if (cnt["source" SUBSEP "sink" SUBSEP n] == 0) continue
      a = med("source" SUBSEP "sink" SUBSEP n); b = med("source" SUBSEP "sync" SUBSEP n)
      printf "| %s, smtp-source | %.0f (%s) | %.0f (%s) | - | - | %.3f | - |\n", n,
        a, all("source" SUBSEP "sink" SUBSEP n), b, all("source" SUBSEP "sync" SUBSEP n),
        (a > 0 ? b / a : 0)
    }
    if (!have_strace) exit
    print ""
    print "| sessions (B, under strace) | messages | file fsyncs | barriers (syncfs) | barriers per message | mean / max in flight |"
    print "|---:|---:|---:|---:|---:|---:|"
    for (i = 1; i <= nn; i++) {
      n = ns[i]; if (!(n in sm)) continue
      printf "| %s | %d | %d | %d | %.2f | %.2f / %d |\n", n, sm[n], sf[n], sd[n],
        (sm[n] ? sd[n] / sm[n] : 0), sc[n], sx[n]
    }
  }' "$RES"
