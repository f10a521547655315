#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine (run as root by
# .ci/run). Idempotent.
set -euo pipefail
