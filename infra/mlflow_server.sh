#!/usr/bin/env bash
# Start, stop or check a local MLflow tracking server: sqlite backend, local artifact
# root, bound to 127.0.0.1.
#
#   infra/mlflow_server.sh start    # http://127.0.0.1:5000
#   infra/mlflow_server.sh status
#   infra/mlflow_server.sh stop     # stops only the server this script started
#
# Settings (environment): MLFLOW_PORT (5000), GENREC_SERVICES_DIR (runs/services),
# MLFLOW_STORE_DIR (runs/mlflow-server: mlflow.db and mlartifacts/ go there).
# Then: export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_BIN="${VENV_BIN:-$PWD/.venv/bin}"
DIR="${GENREC_SERVICES_DIR:-runs/services}"
STORE="${MLFLOW_STORE_DIR:-runs/mlflow-server}"
PORT="${MLFLOW_PORT:-5000}"
PIDFILE="$DIR/mlflow.pid"
LOG="$DIR/mlflow.log"
# The server's job runner is not used here; without it the server needs ~360 MB, not ~1.7 GB.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

running() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

case "${1:-}" in
start)
    if running; then echo "MLflow server already running (pid $(cat "$PIDFILE"))"; exit 0; fi
    mkdir -p "$DIR" "$STORE"
    store="$(cd "$STORE" && pwd)"
    setsid "$VENV_BIN/mlflow" server --host 127.0.0.1 --port "$PORT" \
        --backend-store-uri "sqlite:///$store/mlflow.db" \
        --artifacts-destination "$store/mlartifacts" \
        --workers 1 >"$LOG" 2>&1 < /dev/null &
    echo $! >"$PIDFILE"
    for _ in $(seq 90); do
        if "$VENV_BIN/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" 2>/dev/null; then
            echo "MLflow server up: http://127.0.0.1:$PORT (store $store, log $LOG)"
            echo "  export MLFLOW_TRACKING_URI=http://127.0.0.1:$PORT"
            exit 0
        fi
        running || { echo "MLflow server exited; see $LOG" >&2; tail -20 "$LOG" >&2; rm -f "$PIDFILE"; exit 1; }
        sleep 1
    done
    echo "MLflow server did not answer within 90 s; see $LOG" >&2
    exit 1
    ;;
stop)
    if ! running; then echo "no MLflow server started by this script is running"; rm -f "$PIDFILE"; exit 0; fi
    pgid="$(cat "$PIDFILE")"
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$pgid" 2>/dev/null || true
    rm -f "$PIDFILE"
    echo "MLflow server stopped"
    ;;
status)
    if running; then echo "MLflow server running (pid $(cat "$PIDFILE")), http://127.0.0.1:$PORT"
    else echo "MLflow server not running"; exit 1; fi
    ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
