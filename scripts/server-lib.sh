# Shared helpers of the test-server scripts (nginx-webdav.sh, nginx-static.sh,
# seaweedfs.sh, syncthing.sh). Sourced, not run.

die() { echo "$(basename "$0"): $*" >&2; exit 2; }

# Prints N free TCP ports on 127.0.0.1 (held together while chosen, so they differ).
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# Waits until 127.0.0.1:$1 accepts connections (up to $2 seconds; default 20).
wait_port() {
    local port=$1 limit=${2:-20} i
    for ((i = 0; i < limit * 10; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# True when the pid in file $1 is a live process.
pid_alive() {
    [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

# Stops the process whose pid is in file $1 (TERM, then KILL after 5 s).
stop_pid() {
    local f=$1 pid i
    [ -f "$f" ] || return 0
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

usage_common() {
    cat >&2 <<USAGE
usage: $(basename "$0") start|run|stop|env DIR
  start  start in the background (idempotent: a running server is reused) and print its settings
  run    run in the foreground (for a test that owns the process and kills it)
  stop   stop the server started in DIR
  env    print the settings of the server running in DIR
The server listens on 127.0.0.1 only, on \$PORT or a free port.
USAGE
    exit 2
}
