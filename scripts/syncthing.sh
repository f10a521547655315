#!/usr/bin/env bash
# Starts two Syncthing instances, A and B, on 127.0.0.1 that share one folder:
# DIR/a/store on A is DIR/b/store on B. A party whose --store is DIR/a/store
# and one whose store is DIR/b/store talk through Syncthing, as two machines
# sharing a Syncthing folder do.
#
#   scripts/syncthing.sh start DIR   # prints STORE_A=... STORE_B=... (use with eval/export)
#   scripts/syncthing.sh stop DIR
#
# Each instance has its home (keys, config, database, log) in DIR/a/home or
# DIR/b/home, listens for the other on a free loopback port and serves its
# REST API on another, bound to 127.0.0.1 with an API key. Nothing reaches
# beyond this machine: no global or local discovery, no relays, no NAT
# traversal or STUN, no usage or crash reports, no upgrades; each device
# knows the other's address as tcp://127.0.0.1:PORT. The folder is watched
# (fsWatcherDelayS=1) and rescanned every 5 s as a fallback, so a file
# written on one side appears on the other within a few seconds.
#
# `start` generates keys and configuration (nothing waits for a human),
# starts both, and returns once the devices are connected, a file has
# crossed each way and the folder is idle on both sides; it is idempotent
# (running instances are reused). `stop` kills exactly the processes whose
# pids `start` recorded (Syncthing runs as a monitor process and the
# instance it started; both are recorded). Environment: SYNCTHING_WAIT
# (seconds `start` may wait, default 90), SYNCTHING_WATCH_DELAY (the
# folder's fsWatcherDelayS, default 1; Syncthing's own default is 10) and
# SYNCTHING_RESCAN (rescanIntervalS, default 5). Needs `syncthing`
# (Debian package; scripts/install-test-deps.sh), curl and python3.
set -euo pipefail
. "$(dirname "$0")/server-lib.sh"

usage() {
    cat >&2 <<USAGE
usage: $(basename "$0") start|stop|env DIR
  start  start Syncthing A and B in the background (idempotent: running ones are reused) and print their settings
  stop   stop the instances started in DIR
  env    print the settings of the instances running in DIR
Both listen on 127.0.0.1 only, on free ports.
USAGE
    exit 2
}

[ $# -eq 2 ] || usage
cmd=$1
mkdir -p "$2"
dir=$(cd "$2" && pwd)
folder_id=dmp

running() { pid_alive "$dir/a/syncthing.pid" && pid_alive "$dir/b/syncthing.pid"; }

# The monitor forwards TERM to the instance it runs; the instance's own pid
# file covers a monitor that had to be killed.
stop_all() {
    local s
    for s in a b; do
        stop_pid "$dir/$s/syncthing.pid"
        stop_pid "$dir/$s/syncthing-inner.pid"
    done
}

case $cmd in
    stop) stop_all; exit 0 ;;
    env) [ -f "$dir/server.env" ] && running || die "no Syncthing pair running in $dir"; cat "$dir/server.env"; exit 0 ;;
    start) ;;
    *) usage ;;
esac

if running && [ -f "$dir/server.env" ]; then
    cat "$dir/server.env"
    exit 0
fi
# Half a pair (one instance died): start both afresh.
stop_all

command -v syncthing >/dev/null || die "syncthing is not installed (run scripts/install-test-deps.sh)"
command -v curl >/dev/null || die "curl is not installed (run scripts/install-test-deps.sh)"
wait_s=${SYNCTHING_WAIT:-90}
watch_delay_s=${SYNCTHING_WATCH_DELAY:-1}
rescan_s=${SYNCTHING_RESCAN:-5}

# Never the user's Syncthing: no default folder, no restarts (the monitor
# exits with its instance), no upgrades.
export STNODEFAULTFOLDER=1 STNORESTART=1 STNOUPGRADE=1

read -r sync_a gui_a sync_b gui_b <<<"$(free_ports 4)"

# Keys once per DIR; the device id is derived from the certificate.
declare -A id apikey
for s in a b; do
    mkdir -p "$dir/$s/home" "$dir/$s/store/.stfolder"
    if [ ! -f "$dir/$s/home/cert.pem" ]; then
        syncthing generate --home="$dir/$s/home" --no-default-folder >"$dir/$s/generate.log" 2>&1 \
            || { cat "$dir/$s/generate.log" >&2; die "syncthing generate failed for $s"; }
    fi
    id[$s]=$(syncthing serve --home="$dir/$s/home" --device-id)
    [ -n "${id[$s]}" ] || die "no device id for $s"
    if [ ! -f "$dir/$s/apikey" ]; then
        python3 -c 'import secrets; print(secrets.token_hex(16))' >"$dir/$s/apikey"
        chmod 600 "$dir/$s/apikey"
    fi
    apikey[$s]=$(cat "$dir/$s/apikey")
done

# Writes the complete configuration of side $1 ($2: its sync port, $3: its
# GUI port; $4, $5: the other side and its sync port).
write_config() {
    local me=$1 my_sync=$2 my_gui=$3 other=$4 other_sync=$5
    cat >"$dir/$me/home/config.xml" <<XML
<configuration version="36">
    <folder id="$folder_id" label="dmp" path="$dir/$me/store" type="sendreceive" rescanIntervalS="$rescan_s" fsWatcherEnabled="true" fsWatcherDelayS="$watch_delay_s" ignorePerms="false" autoNormalize="true">
        <filesystemType>basic</filesystemType>
        <device id="${id[$me]}" introducedBy=""></device>
        <device id="${id[$other]}" introducedBy=""></device>
        <minDiskFree unit="%">0</minDiskFree>
        <versioning></versioning>
        <order>random</order>
        <markerName>.stfolder</markerName>
    </folder>
    <device id="${id[$me]}" name="$me" compression="metadata" introducer="false" skipIntroductionRemovals="false" introducedBy="">
        <address>dynamic</address>
        <paused>false</paused>
        <autoAcceptFolders>false</autoAcceptFolders>
    </device>
    <device id="${id[$other]}" name="$other" compression="metadata" introducer="false" skipIntroductionRemovals="false" introducedBy="">
        <address>tcp://127.0.0.1:$other_sync</address>
        <paused>false</paused>
        <autoAcceptFolders>false</autoAcceptFolders>
    </device>
    <gui enabled="true" tls="false" debugging="false">
        <address>127.0.0.1:$my_gui</address>
        <apikey>${apikey[$me]}</apikey>
        <theme>default</theme>
    </gui>
    <options>
        <listenAddress>tcp://127.0.0.1:$my_sync</listenAddress>
        <globalAnnounceServer></globalAnnounceServer>
        <globalAnnounceEnabled>false</globalAnnounceEnabled>
        <localAnnounceEnabled>false</localAnnounceEnabled>
        <reconnectionIntervalS>1</reconnectionIntervalS>
        <relaysEnabled>false</relaysEnabled>
        <startBrowser>false</startBrowser>
        <natEnabled>false</natEnabled>
        <urAccepted>-1</urAccepted>
        <urSeen>3</urSeen>
        <urURL></urURL>
        <autoUpgradeIntervalH>0</autoUpgradeIntervalH>
        <releasesURL></releasesURL>
        <crashReportingEnabled>false</crashReportingEnabled>
        <crashReportingURL></crashReportingURL>
        <stunKeepaliveStartS>0</stunKeepaliveStartS>
        <stunServer></stunServer>
        <minHomeDiskFree unit="%">0</minHomeDiskFree>
        <setLowPriority>false</setLowPriority>
        <announceLANAddresses>false</announceLANAddresses>
    </options>
</configuration>
XML
}
write_config a "$sync_a" "$gui_a" b "$sync_b"
write_config b "$sync_b" "$gui_b" a "$sync_a"

for s in a b; do
    # HOME too: Syncthing must not look at the user's own configuration.
    HOME="$dir/$s/home" nohup syncthing serve --home="$dir/$s/home" --no-browser --no-restart --no-upgrade \
        --no-default-folder --skip-port-probing --logflags=3 >"$dir/$s/syncthing.log" 2>&1 </dev/null &
    echo $! >"$dir/$s/syncthing.pid"
done

gui_port() { if [ "$1" = a ]; then echo "$gui_a"; else echo "$gui_b"; fi; }
# GET of REST path $2 on side $1; prints the body, fails on an HTTP error.
rest() {
    curl -fsS --max-time 5 -H "X-API-Key: ${apikey[$1]}" "http://127.0.0.1:$(gui_port "$1")$2"
}
# Prints field $2 (a Python expression on `j`) of JSON on stdin.
field() { python3 -c "import json, sys; j = json.load(sys.stdin); print($1)"; }

fail() {
    for s in a b; do
        echo "--- syncthing $s (tail of $dir/$s/syncthing.log)" >&2
        tail -20 "$dir/$s/syncthing.log" >&2 || true
    done
    stop_all
    die "$*"
}

# Waits (up to the time left of $wait_s) until command "$@" succeeds.
started=$SECONDS
until_ok() {
    local what=$1
    shift
    until "$@" >/dev/null 2>&1; do
        pid_alive "$dir/a/syncthing.pid" || fail "syncthing a exited while waiting for $what"
        pid_alive "$dir/b/syncthing.pid" || fail "syncthing b exited while waiting for $what"
        ((SECONDS - started < wait_s)) || fail "timed out after ${wait_s} s waiting for $what"
        sleep 0.2
    done
}

connected() {
    [ "$(rest "$1" /rest/system/connections | field "j['connections']['${id[$2]}']['connected']")" = True ]
}
idle() {
    [ "$(rest "$1" "/rest/db/status?folder=$folder_id" | field "j['state']")" = idle ]
}

for s in a b; do
    until_ok "the REST API of $s" rest "$s" /rest/system/ping
    # The instance answering is the monitor's child.
    inner=$(ps -o pid= --ppid "$(cat "$dir/$s/syncthing.pid")" | head -1 | tr -d ' ')
    [ -n "$inner" ] || fail "syncthing $s: no instance below its monitor"
    echo "$inner" >"$dir/$s/syncthing-inner.pid"
done
until_ok "a to connect to b" connected a b
until_ok "b to connect to a" connected b a
# A file crosses each way, then its removal: the folder is shared and both
# sides pull. (The probe's name is none of the protocol's.)
probe=".syncthing-sh-probe-$$"
echo a >"$dir/a/store/$probe-a"
echo b >"$dir/b/store/$probe-b"
until_ok "a file written on a to appear on b" test -f "$dir/b/store/$probe-a"
until_ok "a file written on b to appear on a" test -f "$dir/a/store/$probe-b"
rm -f "$dir/a/store/$probe-a" "$dir/b/store/$probe-b"
until_ok "a removal on a to reach b" test ! -e "$dir/b/store/$probe-a"
until_ok "a removal on b to reach a" test ! -e "$dir/a/store/$probe-b"
until_ok "the folder to be idle on a" idle a
until_ok "the folder to be idle on b" idle b

cat >"$dir/server.env" <<ENV
STORE_A=$dir/a/store
STORE_B=$dir/b/store
SYNCTHING_FOLDER=$folder_id
SYNCTHING_A_DEVICE=${id[a]}
SYNCTHING_B_DEVICE=${id[b]}
SYNCTHING_A_API=http://127.0.0.1:$gui_a
SYNCTHING_B_API=http://127.0.0.1:$gui_b
SYNCTHING_A_APIKEY=${apikey[a]}
SYNCTHING_B_APIKEY=${apikey[b]}
SYNCTHING_A_PORT=$sync_a
SYNCTHING_B_PORT=$sync_b
ENV
chmod 600 "$dir/server.env"
echo "syncthing.sh: A and B connected and idle after $((SECONDS - started)) s" >&2
cat "$dir/server.env"
