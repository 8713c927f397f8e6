#!/bin/bash
# tests/testhost/smoke.sh - prove that tools/testhost/run and the guest kit
# work.
#
#   (a) the test host passes back exit statuses (0, 7, 124 on --timeout)
#       and stdout/stderr byte for byte, and the --env variables;
#   (b) inside it, /dev/kvm works (KVM_GET_API_VERSION, KVM_CREATE_VM);
#   (c) inside it, qemu -enable-kvm boots the guest kit (tools/guest/build)
#       with 1, 2 and 4 vCPUs and answers commands on the console; plus the
#       disk image, memtouch and the SeaBIOS boot image.
#
# (b) and (c) run in one test host session: tests/testhost/guest_boot.py.
# Prints "ok - ..." / "FAIL - ..." per check, timings, and as the last line
# "N passed, N failed"; exits non-zero if a check failed.
set -euo pipefail

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$TOP"
RUN=tools/testhost/run
PASS=0
FAIL=0
T_START=$(date +%s%N)

ok() { PASS=$((PASS + 1)); echo "ok - $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL - $*"; }
# expect NAME WANT GOT
expect() {
	if [ "$2" = "$3" ]; then ok "$1"; else bad "$1 (want '$2', got '$3')"; fi
}
ms() { echo $((($(date +%s%N) - $1) / 1000000)); }
secs() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

echo "# mode: $($RUN --info | sed -n 's/^mode: //p') ($($RUN --info | sed -n 's/^why: //p'))"

# Setup: fetch/build what the test host and the guest kit need (cached).
t=$(date +%s%N)
TH_PROG=smoke
# shellcheck source=tools/testhost/lib.sh
. tools/testhost/lib.sh
th_need_pkgs python3
$RUN --prepare >/dev/null
KIT=$(tools/guest/build)
echo "# setup (test host + guest kit, cached after the first run): $(secs "$(ms "$t")") s"

# (a) exit statuses and output
t=$(date +%s%N)
rc=0; $RUN -- true || rc=$?
T_TRUE=$(ms "$t")
expect "true exits 0" 0 "$rc"
echo "# test host round trip for 'true' (boot + run + power off): $(secs "$T_TRUE") s"

rc=0; $RUN -- sh -c 'exit 7' || rc=$?
expect "sh -c 'exit 7' exits 7" 7 "$rc"

# Output exactness: binary-ish bytes, no trailing newline, separate streams,
# cwd, environment.
printf 'line 1\n\ttabbed  \\ back\\slash\r\nno newline' >"$TMP/want.out"
export SMOKE_VAR="it's a \"quoted\" value"
rc=0
# shellcheck disable=SC2016  # expanded inside the test host
(cd tools && ../$RUN --env SMOKE_VAR -- sh -c '
	printf "line 1\n\ttabbed  \\\\ back\\\\slash\r\nno newline"
	printf "err: %s|%s|%s|%s\n" "$SMOKE_VAR" "$PWD" "$HOME" "${UNSET_VAR-unset}" >&2
	exit 3') >"$TMP/got.out" 2>"$TMP/got.err" || rc=$?
expect "status 3 with output" 3 "$rc"
if cmp -s "$TMP/want.out" "$TMP/got.out"; then
	ok "stdout comes back byte for byte"
else
	bad "stdout comes back byte for byte ($(od -c "$TMP/got.out" | head -n 3 | tr '\n' ' '))"
fi
expect "stderr separate; --env, cwd, HOME" \
	"err: $SMOKE_VAR|$TOP/tools|/root|unset" "$(cat "$TMP/got.err")"

t=$(date +%s%N)
rc=0; $RUN --timeout 5 -- sleep 100 2>/dev/null || rc=$?
expect "--timeout 5 on sleep 100 exits 124" 124 "$rc"
T_TMO=$(ms "$t")
if [ "$T_TMO" -lt 15000 ]; then ok "--timeout is prompt ($(secs "$T_TMO") s)"; else bad "--timeout took $(secs "$T_TMO") s"; fi

# (b) + (c): real KVM inside
t=$(date +%s%N)
rc=0
$RUN --timeout 900 -- /usr/bin/python3 tests/testhost/guest_boot.py "$KIT" \
	>"$TMP/inner.out" 2>"$TMP/inner.err" || rc=$?
T_INNER=$(ms "$t")
cat "$TMP/inner.out"
while read -r line; do
	case $line in
	"ok - "*) PASS=$((PASS + 1)) ;;
	"not ok - "*) FAIL=$((FAIL + 1)) ;;
	esac
done <"$TMP/inner.out"
grep -q '^TIME inner-total' "$TMP/inner.out" || { sed 's/^/# /' "$TMP/inner.err"; }
expect "guest_boot.py exits 0" 0 "$rc"
echo "# test host session with the KVM checks and guest boots: $(secs "$T_INNER") s"

echo "# timings (s): testhost-true $(secs "$T_TRUE")" \
	"$(sed -n 's/^TIME \(guest-ready-[a-z0-9]*\) /\1 /p' "$TMP/inner.out" | tr '\n' ' ')" \
	"smoke-total $(secs "$(ms "$T_START")")"
echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
