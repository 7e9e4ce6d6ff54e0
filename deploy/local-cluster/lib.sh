# shellcheck shell=bash disable=SC2034
# Shared by deploy/local-cluster/up and down (sourced, not run): paths, process checks, stopping.
# Expects HERE (this folder) to be set; sets REPO, STATE, RUN, LOGS, PGDIR, PGDATA.

REPO=$(cd -- "$HERE/../.." && pwd)
VENV=$REPO/.venv
STATE_ARG=${FACTORY_CLUSTER_DIR:-$REPO/.cluster}
STOP_TIMEOUT=${FACTORY_CLUSTER_STOP_TIMEOUT:-20}   # seconds a process gets after SIGTERM before SIGKILL

set_state_paths() {  # $1: the state dir, made absolute (it must exist)
  STATE=$(cd -- "$1" && pwd)
  RUN=$STATE/run
  LOGS=$STATE/logs
  PGDIR=$STATE/postgres
  PGDATA=$PGDIR/data
}

pg_bin() {  # the newest PostgreSQL server binaries Debian installed (…/bin), or nothing
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  if [ -n "$d" ] && [ -x "$d/postgres" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; fi
}

as_pg() {  # initdb, postgres and pg_ctl refuse to run as root: run them as the postgres user
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

alive() {  # $1: pid; a running process (a zombie is not)
  local s
  [ -n "${1:-}" ] && [[ $1 =~ ^[0-9]+$ ]] || return 1
  s=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [ -n "$s" ] && [[ $s != Z* ]]
}

read_pid() {  # $1: pid file; prints its first line when that is a number
  local p=""
  [ -f "$1" ] && read -r p <"$1" 2>/dev/null || true
  [[ $p =~ ^[0-9]+$ ]] && echo "$p" || true
}

cmdline_has() {  # $1: pid, $2: text its command line must contain (guards against a reused pid)
  local c
  c=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
  [[ $c == *"$2"* ]]
}

worker_procs() {  # pids of every live process of this cluster's Celery workers: the dagster-celery wrapper,
  # the celery main process and its pool children all carry "--pidfile=$RUN/worker…" on their command line;
  # plus any member of a worker's process group (its session is set up by `up`)
  local groups="" f p
  for f in "$RUN"/worker*.pid; do
    [[ $f == *.celery.pid ]] && continue
    p=$(read_pid "$f"); [ -n "$p" ] && groups="$groups $p"
  done
  ps -eo pid=,pgid=,stat=,args= 2>/dev/null | while read -r pid pgid stat args; do
    [[ $stat == Z* ]] && continue
    [ "$pid" = "$$" ] && continue
    if [[ $args == *"--pidfile=$RUN/worker"* ]] || [[ " $groups " == *" $pgid "* && $args == *"$RUN/worker"* ]]; then
      echo "$pid"
    fi
  done
}

postgres_procs() {  # pids of this cluster's postmaster and its children (same process group as the postmaster)
  local pm
  pm=$(read_pid "$PGDATA/postmaster.pid")
  [ -n "$pm" ] && alive "$pm" && cmdline_has "$pm" "$PGDATA" || return 0
  ps -eo pid=,pgid=,ppid=,stat= 2>/dev/null | while read -r pid pgid ppid stat; do
    [[ $stat == Z* ]] && continue
    if [ "$pid" = "$pm" ] || [ "$ppid" = "$pm" ]; then echo "$pid"; fi
  done
}

redis_pid() {  # the live redis-server of this cluster, or nothing
  local p
  p=$(read_pid "$RUN/redis.pid")
  [ -n "$p" ] && alive "$p" && [ "$(ps -o comm= -p "$p" 2>/dev/null)" = redis-server ] && echo "$p" || true
}

wait_gone() {  # $1: seconds; the remaining args: pids; 0 when all are gone in time
  local deadline=$((SECONDS + $1)) p left
  shift
  while :; do
    left=0
    for p in "$@"; do alive "$p" && left=1; done
    [ "$left" = 0 ] && return 0
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.2
  done
}

stop_pids() {  # $1: what (for messages); the remaining args: pids. SIGTERM, then SIGKILL after STOP_TIMEOUT s
  local what=$1 p
  shift
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  if ! wait_gone "$STOP_TIMEOUT" "$@"; then
    echo "down: $what still running ${STOP_TIMEOUT}s after SIGTERM; sending SIGKILL" >&2
    for p in "$@"; do alive "$p" && kill -KILL "$p" 2>/dev/null || true; done
    wait_gone 10 "$@" || echo "down: $what: pids $* did not exit even after SIGKILL" >&2
  fi
}
