#!/bin/bash
# make demo: hot-patch a running server with upatch-manage, then take the patch out.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/bin
W=$(mktemp -d /tmp/syscare-demo.XXXXXX)
PORT=${DEMO_PORT:-$((20000 + RANDOM % 20000))}
SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
ask() { # one request to the server, printed
	exec 3<>"/dev/tcp/127.0.0.1/$PORT"; local r; IFS= read -r r <&3; exec 3>&-; echo "    $r"; REPLY_LINE=$r
}
fail() { echo "demo: FAILED: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "patching a process needs root (ptrace); run: sudo make demo"

step "Build the sample server (gcc -O2 -g) and start it"
gcc -O2 -g "$ROOT/tests/demo/server.c" -o "$W/demo-server"
"$W/demo-server" "$PORT" > "$W/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 50); do grep -q listening "$W/server.log" 2>/dev/null && break; sleep 0.1; done
cat "$W/server.log"
ask; [[ $REPLY_LINE == *"demo-server 1.0 (request"* ]] || fail "unexpected reply"

BUILD_ID=$(readelf -n "$W/demo-server" | awk '/Build ID/ {print $3}')
step "Write the fix in C and build the patch object (target build-id $BUILD_ID)"
sed -n '1,3p' "$ROOT/tests/demo/fix.c"
gcc -c -O2 -ffunction-sections -fdata-sections -I "$ROOT/runtime/include" \
	-DTARGET_BUILD_ID="\"$BUILD_ID\"" "$ROOT/tests/demo/fix.c" -o "$W/fix.o"
UUID=$(cat /proc/sys/kernel/random/uuid)

step "Hot-patch the running server (pid $SERVER_PID): upatch-manage patch"
"$BIN/upatch-manage" patch --pid "$SERVER_PID" --patch "$W/fix.o" --uuid "$UUID"
ask; [[ $REPLY_LINE == *"HOTPATCH"* ]] || fail "the patch did not take effect"
ask

step "What the process holds: upatch-manage info"
"$BIN/upatch-manage" info --pid "$SERVER_PID"

step "Take the patch out: upatch-manage unpatch"
"$BIN/upatch-manage" unpatch --pid "$SERVER_PID" --uuid "$UUID"
ask; [[ $REPLY_LINE == *"demo-server 1.0 (request"* ]] || fail "the old behaviour did not come back"
kill -0 "$SERVER_PID" || fail "the server died"
echo
echo "demo: OK"
