#!/usr/bin/env bash
# Installs the Debian packages the tests use, skipping the apt round trip when they are all present.
set -euo pipefail
pkgs=(espeak-ng ffmpeg chromium make gcc git prometheus)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
