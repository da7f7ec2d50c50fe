# Shared prelude of every guest script (bash, cwd = the NFS mount at /mnt).
# Each check prints one line, "ok NAME" or "FAIL NAME: detail"; the Rust test asserts that every
# expected name is there with "ok" and that no line says FAIL. The exit code is the number of
# failed checks (capped), so a script that dies half-way is noticed as well.
set -u
cd /mnt || { echo "FAIL cd-mnt: cannot cd /mnt"; exit 1; }
FAILS=0
ok() { echo "ok $1"; }
fail() { echo "FAIL $1: $2"; FAILS=$((FAILS + 1)); }
# check NAME COMMAND... : ok when COMMAND succeeds; its output is the detail otherwise.
check() {
    local name=$1; shift
    if "$@" > /tmp/check.out 2>&1; then ok "$name"
    else fail "$name" "'$*' failed: $(tr '\n' ' ' < /tmp/check.out | cut -c1-400)"; fi
}
# check_fails NAME PATTERN COMMAND... : ok when COMMAND fails and its output matches PATTERN (an
# extended regular expression).
check_fails() {
    local name=$1 pattern=$2; shift 2
    if "$@" > /tmp/check.out 2>&1; then
        fail "$name" "'$*' succeeded but should have failed with '$pattern'"
    elif grep -qE -- "$pattern" /tmp/check.out; then ok "$name"
    else fail "$name" "'$*' failed without '$pattern': $(tr '\n' ' ' < /tmp/check.out | cut -c1-400)"; fi
}
# check_eq NAME EXPECTED ACTUAL
check_eq() {
    if [ "$2" = "$3" ]; then ok "$1"; else fail "$1" "expected '$2', got '$3'"; fi
}
md5() { md5sum "$1" | cut -d' ' -f1; }
# Writes back dirty pages and drops the guest's page, dentry and inode caches, so the next
# read goes to the server.
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
finish() { ok script-completed; exit $(( FAILS > 100 ? 100 : FAILS )); }
