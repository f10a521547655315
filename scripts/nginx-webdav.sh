#!/usr/bin/env bash
# Starts nginx as a WebDAV server (dav + dav-ext) on 127.0.0.1, serving DIR/data.
#
#   scripts/nginx-webdav.sh start DIR   # prints DMP_STORE=webdav://127.0.0.1:PORT/ ...
#   scripts/nginx-webdav.sh stop DIR
#
# Environment: PORT (default: a free port); WEBDAV_USER and WEBDAV_PASSWORD
# turn on HTTP basic authentication; ACCESS_LOG=1 logs every request to
# DIR/logs/access.log (the benchmark counts them). Needs the Debian packages nginx and
# libnginx-mod-http-dav-ext (scripts/install-test-deps.sh).
set -euo pipefail
. "$(dirname "$0")/server-lib.sh"

[ $# -eq 2 ] || usage_common
cmd=$1
mkdir -p "$2"
dir=$(cd "$2" && pwd)

print_env() {
    cat "$dir/server.env"
}

case $cmd in
    stop) stop_pid "$dir/nginx.pid"; exit 0 ;;
    env) [ -f "$dir/server.env" ] && pid_alive "$dir/nginx.pid" || die "no server running in $dir"; print_env; exit 0 ;;
    start | run) ;;
    *) usage_common ;;
esac

if [ "$cmd" = start ] && pid_alive "$dir/nginx.pid"; then
    print_env
    exit 0
fi

command -v nginx >/dev/null || PATH=$PATH:/usr/sbin
command -v nginx >/dev/null || die "nginx is not installed (run scripts/install-test-deps.sh)"
module=""
for m in /usr/lib/nginx/modules/ngx_http_dav_ext_module.so /usr/share/nginx/modules/ngx_http_dav_ext_module.so; do
    [ -f "$m" ] && module=$m && break
done
[ -n "$module" ] || die "the nginx dav-ext module is not installed (Debian: libnginx-mod-http-dav-ext)"

port=${PORT:-$(free_ports 1)}
mkdir -p "$dir/data" "$dir/tmp" "$dir/logs"
user_line=""
if [ "$(id -u)" = 0 ]; then
    user_line="user $(id -un) $(id -gn);"
fi
access_log="access_log off;"
if [ -n "${ACCESS_LOG:-}" ]; then
    access_log="log_format dmp '\$msec \$request_method \$uri \$status \$request_length \$bytes_sent'; access_log $dir/logs/access.log dmp;"
fi
auth=""
if [ -n "${WEBDAV_USER:-}" ]; then
    printf '%s:{PLAIN}%s\n' "$WEBDAV_USER" "${WEBDAV_PASSWORD:-}" >"$dir/htpasswd"
    chmod 600 "$dir/htpasswd"
    auth="auth_basic \"dmp\"; auth_basic_user_file $dir/htpasswd;"
fi

cat >"$dir/nginx.conf" <<CONF
load_module $module;
$user_line
worker_processes 2;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 512; }
http {
    $access_log
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    server {
        listen 127.0.0.1:$port;
        root $dir/data;
        client_max_body_size 0;
        client_body_buffer_size 1m;
        location / {
            $auth
            # PUT writes to client_body_temp_path (same file system) and renames into place.
            dav_methods PUT DELETE MKCOL COPY MOVE;
            dav_ext_methods PROPFIND OPTIONS;
            dav_access user:rw group:r all:r;
            # Off on purpose: clients must create parents with MKCOL, as on Apache.
            create_full_put_path off;
            autoindex off;
        }
    }
}
CONF

cat >"$dir/server.env" <<ENV
DMP_STORE=webdav://127.0.0.1:$port/
DMP_TEST_WEBDAV_URL=http://127.0.0.1:$port/
ENV

if [ "$cmd" = run ]; then
    exec nginx -e "$dir/logs/error.log" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;'
fi
nginx -e "$dir/logs/error.log" -p "$dir" -c "$dir/nginx.conf"
wait_port "$port" 10 || { cat "$dir/logs/error.log" >&2; die "nginx did not start on port $port"; }
print_env
