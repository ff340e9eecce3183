#!/bin/bash
# Install (or with --check, verify) the system packages SysCare's build, tests and demo use.
# Debian/Ubuntu through apt, Fedora/openEuler through dnf.
set -euo pipefail
# Commands whose absence means a package is missing.
NEED=(gcc perl rpmbuild autoreconf libtoolize cmake createrepo_c dnf eu-strip cpio dbus-daemon busybox qemu-system-x86_64 debugedit flex bison bc pahole
	ansible-playbook cockpit-bridge rpmlint zsh tmux man journalctl)
missing=()
for c in "${NEED[@]}"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
# The Cockpit page's browser test (cockpit/browsertest): cockpit-ws lives outside PATH,
# and Debian's headless Chromium and Fedora's have different names.
[ -x /usr/lib/cockpit/cockpit-ws ] || [ -x /usr/libexec/cockpit-ws ] || missing+=("cockpit-ws")
command -v chromium-headless-shell >/dev/null 2>&1 || command -v chromium >/dev/null 2>&1 ||
	command -v chromium-browser >/dev/null 2>&1 || missing+=("chromium-headless-shell")
/usr/bin/python3 -c 'import dnf, dbus, pytest, gi' >/dev/null 2>&1 || missing+=("python3-dnf/dbus/pytest/gi")
if [ "${1:-}" = "--check" ]; then
	[ ${#missing[@]} -eq 0 ] || { echo "missing: ${missing[*]}"; exit 1; }
	exit 0
fi
[ ${#missing[@]} -eq 0 ] && { echo "deps: all present"; exit 0; }
echo "deps: installing (missing: ${missing[*]})"
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
if command -v apt-get >/dev/null 2>&1; then
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
		gcc g++ make libc6-dev autoconf automake libtool cmake dnf rpm createrepo-c python3-dnf python3-dbus python3-gi elfutils debugedit cpio \
		python3-pytest qemu-system-x86 busybox-static dbus-daemon polkitd \
		flex bison bc libelf-dev libssl-dev dwarves ansible-core cockpit-ws cockpit-bridge chromium-headless-shell \
		rpmlint zsh tmux man-db systemd perl >/dev/null
elif command -v dnf >/dev/null 2>&1; then
	$SUDO dnf install -y -q gcc gcc-c++ make autoconf automake libtool cmake rpm-build createrepo_c python3-dnf python3-dbus python3-gobject-base \
		elfutils debugedit cpio python3-pytest qemu-system-x86 busybox dbus-daemon polkit \
		flex bison bc elfutils-libelf-devel openssl-devel dwarves ansible-core cockpit-ws cockpit-bridge chromium-headless \
		rpmlint zsh tmux man-db systemd perl
else
	echo "deps: neither apt-get nor dnf found; install: ${NEED[*]}" >&2
	exit 1
fi
