#!/usr/bin/env bash
# Debian packages the test suite needs: PortAudio (sounddevice), PulseAudio (the `talk` test's audio
# server), Chromium (the browser-page test), sox, espeak-ng and flite (voices for `bench voice` questions and
# the turn-taking calibration that are not the assistant's own). `--calibration` adds festival with
# festvox-kdlpc16k (the calibration's fourth voice, scripts/fit_turn_fusion.py; no test needs it).
# Installs only what is missing; a no-op when all are there.
set -euo pipefail
packages=(libportaudio2 pulseaudio pulseaudio-utils chromium chromium-driver sox espeak-ng flite)
[ "${1:-}" = "--calibration" ] && packages+=(festival festvox-kdlpc16k)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing system packages: ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
