#!/usr/bin/env bash
# Idempotent setup of a lab node: system packages, kernel headers for BCC,
# bpffs/tracefs mounts, the venv and the package. A second run changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: must run as root (apt packages, kernel headers link, bpffs mount)" >&2
    exit 1
fi

APT_PACKAGES=(python3-bpfcc python3-venv python3-dev linux-headers-amd64 bpftool iproute2 iptables
              iperf3 curl chromium procps iputils-ping)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing apt packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# BCC compiles against /lib/modules/$(uname -r)/{build,source}. This kernel ships
# no headers; Debian's headers work for networking programs (measured on this machine).
# Debian splits them: the arch package (build) and the -common package (source).
KREL=$(uname -r)
MODDIR=/lib/modules/$KREL
if [ ! -e "$MODDIR/source/include/linux/kconfig.h" ] || [ ! -e "$MODDIR/build/Makefile" ]; then
    arch_dir=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
    common_dir=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$arch_dir" ] || [ -z "$common_dir" ]; then
        echo "setup: no Debian kernel headers under /usr/src (apt-get install linux-headers-amd64)" >&2
        exit 1
    fi
    mkdir -p "$MODDIR"
    ln -sfn "$arch_dir" "$MODDIR/build"
    ln -sfn "$common_dir" "$MODDIR/source"
    say "kernel $KREL ships no headers: linked $arch_dir as $MODDIR/build and $common_dir as $MODDIR/source"
fi

mountpoint -q /sys/fs/bpf || { mount -t bpf bpf /sys/fs/bpf; say "mounted bpffs at /sys/fs/bpf"; }
mountpoint -q /sys/kernel/tracing || { mount -t tracefs tracefs /sys/kernel/tracing; say "mounted tracefs at /sys/kernel/tracing"; }
if ! grep -q ' cgroup2 ' /proc/mounts; then
    mkdir -p /sys/fs/cgroup/unified
    mount -t cgroup2 none /sys/fs/cgroup/unified
    say "mounted cgroup2 at /sys/fs/cgroup/unified"
fi

# BCC is Debian's python3-bpfcc: the venv must be made by Debian's python with
# the system site-packages visible.
if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ]; then
    say "installing the package and its dev tools into .venv"
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[dev]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi
# promtool judges the Prometheus exposition in the tests. It comes from Debian's prometheus package;
# only the tool is unpacked into the venv, so no Prometheus server gets installed or started.
if [ ! -x .venv/bin/promtool ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1) || { apt-get update -qq && (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1); }
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
    install -m 0755 "$tmp/x/usr/bin/promtool" .venv/bin/promtool
    rm -rf "$tmp"
    say "unpacked promtool (Debian's prometheus package) into .venv/bin"
fi
say "ready"
