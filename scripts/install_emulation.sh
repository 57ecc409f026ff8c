#!/bin/sh
# AArch64 emulation for the NEON kernel tests (pytest -m emulation): user-mode QEMU and a
# cross C compiler for the small test harness. Debian/Ubuntu; needs root (or sudo).
set -eu
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends \
    qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross
