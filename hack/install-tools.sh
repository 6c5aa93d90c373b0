#!/usr/bin/env bash
# Install the test bed's Debian tools if missing: prometheus and promtool (the autoscaler's
# integration tests run a real Prometheus). Idempotent; prints what it does.
set -euo pipefail

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  echo "prometheus present: $(prometheus --version 2>&1 | head -1)"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "prometheus and promtool are needed; install them (Debian/Ubuntu package: prometheus)" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "==> installing Debian's prometheus package (prometheus, promtool)"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
echo "prometheus installed: $(prometheus --version 2>&1 | head -1)"
