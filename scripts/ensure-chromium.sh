#!/usr/bin/env bash
# The status-page test (tests/e2e/test_observability.py) renders the admin
# page in headless Chromium; this makes sure a browser exists (CI machines
# start without one).  Debian's package is used: no snap, no download script.
set -euo pipefail
for name in chromium chromium-browser google-chrome; do
  if command -v "$name" >/dev/null 2>&1; then
    exit 0
  fi
done
if [ "$(id -u)" = "0" ]; then SUDO=""; else SUDO="sudo"; fi
echo "chromium not found: installing it with apt-get" >&2
$SUDO apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
command -v chromium >/dev/null
