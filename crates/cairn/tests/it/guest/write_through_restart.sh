# Writes a 32 MiB file slowly, one MiB per open/write/close (each close flushes and commits),
# while the host kills the server with SIGKILL and restarts it (hard mount: the client waits and
# retries). Prints "progress I" after MiB I, for the host to strike in the middle. Afterwards
# the whole file must be right.
head -c 4194304 /dev/urandom > /tmp/before
check write-before-crash dd if=/tmp/before of=before.bin bs=1M conv=fsync status=none
head -c 33554432 /dev/urandom > /tmp/during
echo "md5 before.bin $(md5 /tmp/before)"
echo "md5 during.bin $(md5 /tmp/during)"
started=$(date +%s)
for i in $(seq 0 31); do
    dd if=/tmp/during of=during.bin bs=1M skip=$i seek=$i count=1 conv=notrunc status=none ||
        fail write-during-crash "dd of MiB $i failed"
    echo "progress $i"
    busybox usleep 150000
done
echo "info: the writes took $(( $(date +%s) - started )) s"
ok write-during-crash-returned
drop_caches
check_eq during-size 33554432 "$(stat -c %s during.bin)"
check during-content cmp during.bin /tmp/during
check before-content cmp before.bin /tmp/before
finish
