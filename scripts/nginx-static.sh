#!/usr/bin/env bash
# Starts nginx serving a folder read-only over plain HTTP on 127.0.0.1: the
# original mode, where each party's outbox folder is published by a web server.
#
#   ROOT=/path/to/store scripts/nginx-static.sh start DIR   # prints DMP_TEST_HTTP_URL=http://127.0.0.1:PORT/
#   scripts/nginx-static.sh stop DIR
#
# Environment: ROOT, the folder to serve (default DIR/www); PORT (default: a
# free port). Names starting with '.' (a folder store's temporary files) are
# never served.
set -euo pipefail
. "$(dirname "$0")/server-lib.sh"

[ $# -eq 2 ] || usage_common
cmd=$1
mkdir -p "$2"
dir=$(cd "$2" && pwd)

case $cmd in
    stop) stop_pid "$dir/nginx.pid"; exit 0 ;;
    env) [ -f "$dir/server.env" ] && pid_alive "$dir/nginx.pid" || die "no server running in $dir"; cat "$dir/server.env"; exit 0 ;;
    start | run) ;;
    *) usage_common ;;
esac

if [ "$cmd" = start ] && pid_alive "$dir/nginx.pid"; then
    cat "$dir/server.env"
    exit 0
fi

command -v nginx >/dev/null || PATH=$PATH:/usr/sbin
command -v nginx >/dev/null || die "nginx is not installed (run scripts/install-test-deps.sh)"
root=${ROOT:-$dir/www}
mkdir -p "$root" "$dir/tmp" "$dir/logs"
root=$(cd "$root" && pwd)
port=${PORT:-$(free_ports 1)}
user_line=""
if [ "$(id -u)" = 0 ]; then
    user_line="user $(id -un) $(id -gn);"
fi

cat >"$dir/nginx.conf" <<CONF
$user_line
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 512; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    default_type application/octet-stream;
    types { }
    sendfile on;
    keepalive_requests 100000;
    server {
        listen 127.0.0.1:$port;
        root $root;
        autoindex off;
        location / {
            limit_except GET { deny all; }
        }
        location ~ /\. { return 404; }
    }
}
CONF

cat >"$dir/server.env" <<ENV
DMP_TEST_HTTP_URL=http://127.0.0.1:$port/
DMP_TEST_HTTP_ROOT=$root
ENV

if [ "$cmd" = run ]; then
    exec nginx -e "$dir/logs/error.log" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;'
fi
nginx -e "$dir/logs/error.log" -p "$dir" -c "$dir/nginx.conf"
wait_port "$port" 10 || { cat "$dir/logs/error.log" >&2; die "nginx did not start on port $port"; }
cat "$dir/server.env"
