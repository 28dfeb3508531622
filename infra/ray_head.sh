#!/usr/bin/env bash
# Start, stop or check a local Ray head for `ray job submit` (bound to 127.0.0.1).
#
#   infra/ray_head.sh start    # head with dashboard/job API on http://127.0.0.1:8265
#   infra/ray_head.sh status
#   infra/ray_head.sh stop     # stops only the head this script started (its process group)
#
# Settings (environment): RAY_NUM_CPUS (default: all), RAY_OBJECT_STORE_MB (500),
# RAY_GCS_PORT (6379), RAY_DASHBOARD_PORT (8265), GENREC_SERVICES_DIR (runs/services).
# Ray 2.60 uses token authentication: the token is RAY_AUTH_TOKEN if set, else
# ~/.ray/auth_token (created here, mode 600, when missing). Clients (`ray job submit`,
# `ray status`) need `export RAY_AUTH_MODE=token` and the same token.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_BIN="${VENV_BIN:-$PWD/.venv/bin}"
DIR="${GENREC_SERVICES_DIR:-runs/services}"
PIDFILE="$DIR/ray-head.pid"
LOG="$DIR/ray-head.log"
GCS_PORT="${RAY_GCS_PORT:-6379}"
DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
export RAY_AUTH_MODE=token

running() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

ensure_token() {
    [[ -n "${RAY_AUTH_TOKEN:-}" ]] && return
    local token_file="$HOME/.ray/auth_token"
    if [[ ! -s "$token_file" ]]; then
        mkdir -p "$HOME/.ray"
        (umask 077 && "$VENV_BIN/python" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$token_file")
        echo "created a Ray auth token in $token_file"
    fi
}

case "${1:-}" in
start)
    if running; then echo "Ray head already running (pid $(cat "$PIDFILE"))"; exit 0; fi
    mkdir -p "$DIR"
    ensure_token
    args=(--head --block --port="$GCS_PORT" --node-ip-address=127.0.0.1
          --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT"
          --object-store-memory=$(( ${RAY_OBJECT_STORE_MB:-500} * 1024 * 1024 ))
          --disable-usage-stats)
    [[ -n "${RAY_NUM_CPUS:-}" ]] && args+=(--num-cpus="$RAY_NUM_CPUS")
    # Its own session: `stop` can then end exactly this head and its children.
    PATH="$VENV_BIN:$PATH" setsid "$VENV_BIN/ray" start "${args[@]}" >"$LOG" 2>&1 < /dev/null &
    echo $! >"$PIDFILE"
    for _ in $(seq 60); do
        if "$VENV_BIN/python" - "$DASHBOARD_PORT" <<'PY' 2>/dev/null; then
import sys, urllib.error, urllib.request
# Any HTTP answer means the dashboard is up; with token auth an unauthenticated call gets 401.
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/api/version", timeout=2)
except urllib.error.HTTPError:
    pass
PY
            echo "Ray head up: job API http://127.0.0.1:$DASHBOARD_PORT, GCS 127.0.0.1:$GCS_PORT (log $LOG)"
            echo "  export RAY_AUTH_MODE=token RAY_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT"
            exit 0
        fi
        running || { echo "Ray head exited; see $LOG" >&2; tail -20 "$LOG" >&2; rm -f "$PIDFILE"; exit 1; }
        sleep 1
    done
    echo "Ray head did not answer within 60 s; see $LOG" >&2
    exit 1
    ;;
stop)
    if ! running; then echo "no Ray head started by this script is running"; rm -f "$PIDFILE"; exit 0; fi
    pgid="$(cat "$PIDFILE")"
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$pgid" 2>/dev/null || true
    rm -f "$PIDFILE"
    echo "Ray head stopped"
    ;;
status)
    if running; then echo "Ray head running (pid $(cat "$PIDFILE")), job API http://127.0.0.1:$DASHBOARD_PORT"
    else echo "Ray head not running"; exit 1; fi
    ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
