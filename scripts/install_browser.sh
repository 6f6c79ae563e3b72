#!/usr/bin/env bash
# Debian's Chromium for the console's browser tests (Playwright drives it; its own browser download
# needs the internet). Run by `make test` when /usr/bin/chromium is missing.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium > /dev/null
/usr/bin/chromium --version
