#!/bin/bash
# make demo: the whole product on one machine. Build a sample package (source, binary and
# -debuginfo RPMs), install it (without its -debuginfo, as on a production host) into a
# scratch root with dnf and start its server; build a
# hot patch for a security fix with `syscare build`, publish it with `syscare repo add`,
# and install it with `dnf hotpatch upgrade` against syscare-helper on a private bus: the
# running server changes behaviour; `dnf hotpatch remove` brings the old one back.
#
# Environment: SYSCARE_BIN (default bin/ of the tree) holds the built binaries;
# DEMO_PORT picks the server's port; DEMO_KEEP=1 keeps the scratch directory.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${SYSCARE_BIN:-$ROOT/bin}
export PATH=$BIN:/usr/local/go/bin:$PATH
PORT=${DEMO_PORT:-$((20000 + RANDOM % 20000))}
W=$(mktemp -d "${TMPDIR:-/tmp}/syscare-demo.XXXXXX")
TOP=$W/rpmbuild REPO=$W/repo INSTROOT=$W/root
ADDR=unix:abstract=/syscare-demo-$(basename "$W")-$$
SERVER_PID= DBUS_PID= HELPER_PID=

# helper_pid asks the bus which process owns the helper's name; without dbus-send, the
# process whose command line names this run's scratch root.
helper_pid() {
	if command -v dbus-send >/dev/null; then
		dbus-send --bus="$ADDR" --print-reply=literal --dest=org.freedesktop.DBus / \
			org.freedesktop.DBus.GetConnectionUnixProcessID string:org.openeuler.SysCare1 2>/dev/null |
			awk '{print $2}'
	else
		pgrep -f -- "syscare-helper --root $INSTROOT " || true
	fi
}
cleanup() {
	local rc=$?
	trap "" INT TERM; trap - EXIT
	set +e
	[ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
	if [ -n "$DBUS_PID" ]; then
		HELPER_PID=$(helper_pid)
		kill "$DBUS_PID" 2>/dev/null && wait "$DBUS_PID" 2>/dev/null
		# The helper leaves once its bus is gone; make sure of it.
		if [ -n "$HELPER_PID" ]; then
			for _ in $(seq 20); do kill -0 "$HELPER_PID" 2>/dev/null || break; sleep 0.1; done
			kill -9 "$HELPER_PID" 2>/dev/null
		fi
	fi
	if [ "$rc" != 0 ] && [ -s "$W/bus.log" ]; then
		echo "--- helper and bus log (last 30 lines):" >&2
		tail -n 30 "$W/bus.log" >&2
	fi
	if [ -n "${DEMO_KEEP:-}" ]; then echo "demo: kept $W" >&2; else rm -rf "$W"; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'echo "demo: interrupted" >&2; exit 130' INT TERM

indent() { sed 's/^/    /'; }
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
show() { printf '    $ %s\n' "$*"; } # a command as the operator would type it
fail() {
	echo "demo: FAILED: $*" >&2
	exit 1
}
# ask sends NAME to the server and prints its one-line reply (kept in REPLY_LINE).
ask() {
	exec 3<>"/dev/tcp/127.0.0.1/$PORT" || fail "the server does not accept connections"
	printf '%s\n' "$1" >&3
	IFS= read -r -t 10 REPLY_LINE <&3 || REPLY_LINE="(no reply)"
	exec 3>&-
	printf '    send %-10s -> %s\n' "\"$1\"" "$REPLY_LINE"
}
# dnf_root runs dnf on the scratch root, with the plugin from the source tree and the
# helper on the private bus. --refresh: metadata_expire=0 alone leaves a cache written
# in the same second unexpired, and a patch published in that second unseen.
dnf_root() {
	DBUS_SYSTEM_BUS_ADDRESS=$ADDR dnf -y --installroot="$INSTROOT" --setopt=reposdir="$W/reposd" \
		--repofrompath=demo,"$REPO" --nogpgcheck --setopt=install_weak_deps=False \
		--setopt=metadata_expire=0 --refresh --releasever=1 --setopt=pluginpath="$ROOT/dnf-plugin" \
		--setopt=pluginconfpath="$W/pluginconf" "$@" 2>&1 | tee "$W/dnf.out"
	local rc=${PIPESTATUS[0]}
	if grep -q "Failed loading plugin" "$W/dnf.out"; then fail "dnf could not load the hotpatch plugin"; fi
	return "$rc"
}
# leaks: the reply holds what %p printed (a pointer or "(nil)"), not the name.
leaks() { [[ $REPLY_LINE =~ hello,\ (0x|\(nil\)) ]] && [[ $REPLY_LINE != *"%p"* ]]; }
fixed() { [[ $REPLY_LINE == *"hello, %p %p %p"* ]]; }

[ "$(id -u)" = 0 ] || fail "patching a process needs root (ptrace); run: sudo make demo"
for tool in rpmbuild createrepo_c dnf dbus-daemon gcc go /bin/busybox /usr/bin/python3; do
	command -v "$tool" >/dev/null || fail "$tool is missing (make check-deps installs it)"
done
for b in syscare syscare-build syscare-helper; do
	[ -x "$BIN/$b" ] || fail "$BIN/$b is missing (make build)"
done
mkdir -p "$TOP/SOURCES" "$TOP/SPECS" "$REPO" "$INSTROOT" "$W/reposd" "$W/pluginconf" "$W/services" "$W/out"

step "Build the sample package demo-server 1.0-1 (source, binary and -debuginfo RPMs)"
tar -czf "$TOP/SOURCES/demo-server-1.0.tar.gz" -C "$ROOT/tests/demo" --transform 's,^src,demo-server-1.0,' src
cp "$ROOT/tests/demo/demo-server.spec" "$TOP/SPECS/"
show rpmbuild -ba demo-server.spec
rpmbuild -ba --nodeps --quiet --define "_topdir $TOP" "$TOP/SPECS/demo-server.spec" >"$W/rpmbuild.log" 2>&1 ||
	{ cat "$W/rpmbuild.log"; fail "rpmbuild demo-server"; }
SRPM=$(ls "$TOP"/SRPMS/demo-server-1.0-1*.src.rpm)
DEBUGINFO=$(ls "$TOP"/RPMS/*/demo-server-debuginfo-1.0-1*.rpm)
(cd "$TOP" && ls SRPMS/*.rpm RPMS/*/*.rpm | sed 's/^/    /')

# The root has no distribution in it: a stand-in "syscare" package carries the CLI
# (static, it runs chrooted there) that a patch RPM's scriptlet calls, and a shell.
CGO_ENABLED=0 go build -C "$ROOT" -o "$TOP/SOURCES/syscare" ./helper/cmd/syscare
cat >"$TOP/SPECS/syscare.spec" <<'SPEC'
Name: syscare
Version: 1
Release: 1
Summary: the syscare CLI for the demo root
License: MIT
AutoReqProv: no
Provides: /bin/sh
%global debug_package %{nil}
%global __os_install_post %{nil}
%description
The syscare CLI and a shell, for patch RPM scriptlets in the demo root.
%install
install -D -m 0755 %{_sourcedir}/syscare %{buildroot}/usr/bin/syscare
install -D -m 0755 /bin/busybox %{buildroot}/bin/sh
%files
/usr/bin/syscare
/bin/sh
SPEC
rpmbuild -bb --nodeps --quiet --define "_topdir $TOP" "$TOP/SPECS/syscare.spec" >"$W/rpmbuild.log" 2>&1 ||
	{ cat "$W/rpmbuild.log"; fail "rpmbuild syscare"; }
cp "$TOP"/RPMS/*/*.rpm "$REPO/"
createrepo_c -q "$REPO"

step "Install it into a scratch root with dnf ($INSTROOT)"
show dnf install demo-server
dnf_root -q install demo-server syscare >/dev/null || { cat "$W/dnf.out"; fail "dnf install"; }
rpm --root "$INSTROOT" -q demo-server | sed 's/^/    /'
# A production host: the binary is stripped and its -debuginfo package is not installed,
# so the hot patch must carry every offset it needs.
if rpm --root "$INSTROOT" -q demo-server-debuginfo >/dev/null 2>&1; then fail "demo-server-debuginfo is installed"; fi
if readelf -S "$INSTROOT/usr/bin/demo-server" | grep -q '\.symtab'; then fail "demo-server is not stripped"; fi
echo "    demo-server-debuginfo is not installed and /usr/bin/demo-server is stripped, as on a production host"

step "Start the server and see the vulnerability (CVE-2024-0001: the name is used as a format)"
"$INSTROOT/usr/bin/demo-server" "$PORT" >"$W/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 50); do grep -q listening "$W/server.log" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$W/server.log" || { cat "$W/server.log"; fail "the server did not start"; }
sed 's/^/    /' "$W/server.log"
ask alice
[[ $REPLY_LINE == *"hello, alice"* ]] || fail "unexpected reply"
ask "%p %p %p"
leaks || fail "the unpatched server does not show the bug"
echo "    (the server sent back its own memory: pointers instead of the name)"

step "Build a hot patch from the fix with syscare build"
sed -n '/^Subject/,/^---/p' "$ROOT/tests/demo/CVE-2024-0001.patch" | sed '$d; s/^/    /'
show syscare build --patch-name HP001 --source "$(basename "$SRPM")" --debuginfo "$(basename "$DEBUGINFO")" --patch CVE-2024-0001.patch
syscare build --patch-name HP001 --patch-description "fix CVE-2024-0001 (format string in make_reply)" \
	--source "$SRPM" --debuginfo "$DEBUGINFO" --patch "$ROOT/tests/demo/CVE-2024-0001.patch" \
	--output "$W/out" --jobs 2 | indent ||
	fail "syscare build"
PATCH_RPM=$(ls "$W"/out/patch-demo-server-1.0-1-HP001-*.x86_64.rpm)
PATCH_NAME=patch-demo-server-1.0-1-HP001
echo "    -> $(basename "$PATCH_RPM")"

step "Publish it in the repository with an advisory and the CVE"
show syscare repo add REPO "$(basename "$PATCH_RPM")" --advisory DEMO-SA-2024-0001 --cve CVE-2024-0001 ...
syscare repo add "$REPO" "$PATCH_RPM" --advisory DEMO-SA-2024-0001 --cve CVE-2024-0001 \
	--severity Important --type security --title "demo-server: format string in the greeting" | indent ||
	fail "syscare repo add"

step "Start a private D-Bus bus; syscare-helper is activated on it for the scratch root"
cat >"$W/services/org.openeuler.SysCare1.service" <<SVC
[D-BUS Service]
Name=org.openeuler.SysCare1
Exec=$BIN/syscare-helper --root $INSTROOT --idle-timeout 120s
User=root
SVC
# An abstract socket: the same address reaches the bus from the patch RPM's
# scriptlets, which rpm runs chrooted in the scratch root.
sed -e "s#unix:path=@DIR@/bus.sock#$ADDR#" -e "s#@SERVICEDIR@#$W/services#" \
	-e "s#@POLICY@#$ROOT/dbus/org.openeuler.SysCare1.conf#" "$ROOT/dbus/sandbox-bus.conf.in" >"$W/bus.conf"
grep -q "$ADDR" "$W/bus.conf" || fail "dbus/sandbox-bus.conf.in lost the listen line the demo replaces"
dbus-daemon --config-file="$W/bus.conf" --nofork --print-address=3 3>"$W/address" 2>"$W/bus.log" &
DBUS_PID=$!
for _ in $(seq 100); do [ -s "$W/address" ] && break; sleep 0.05; done
[ -s "$W/address" ] || fail "dbus-daemon did not start"
echo "    bus: $ADDR"

step "What the repositories offer for this host: dnf hotpatch list --available"
# --refresh: the root's dnf cache was made by the install above, maybe in the same
# second as the publishing, which dnf's expiry check cannot tell apart.
show dnf --refresh hotpatch list --available
dnf_root -q --refresh hotpatch list --available | indent ||
	fail "dnf hotpatch list --available"
grep -q "DEMO-SA-2024-0001" "$W/dnf.out" && grep -q "CVE-2024-0001" "$W/dnf.out" ||
	fail "the advisory is not offered"

step "Install and activate it: dnf hotpatch upgrade -y"
show dnf hotpatch upgrade -y
dnf_root -q hotpatch upgrade | indent ||
	fail "dnf hotpatch upgrade"

step "The running server (pid $SERVER_PID, never restarted) is fixed"
ask alice
ask "%p %p %p"
fixed || fail "the hot patch did not take effect"
kill -0 "$SERVER_PID" || fail "the server died"

step "dnf hotpatch list"
show dnf hotpatch list
dnf_root -q hotpatch list | indent ||
	fail "dnf hotpatch list"
grep -q "$PATCH_NAME .*ACTIVED" "$W/dnf.out" || fail "the patch is not listed as ACTIVED"

step "Take it out again: dnf hotpatch remove $PATCH_NAME"
show dnf hotpatch remove "$PATCH_NAME"
dnf_root -q hotpatch remove "$PATCH_NAME" | indent ||
	fail "dnf hotpatch remove"
rpm --root "$INSTROOT" -q "$PATCH_NAME" >/dev/null 2>&1 && fail "the patch RPM is still installed"
ask "%p %p %p"
leaks || fail "the old behaviour did not come back"
kill -0 "$SERVER_PID" || fail "the server died"
echo
echo "demo: OK"
