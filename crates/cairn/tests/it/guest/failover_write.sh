# MIB (default 256) MiB of random data written through one gateway or virtual IP, 16 MiB per dd,
# while the host kills a node or moves the VIP (hard mount: the client waits and retries). Prints
# "progress I" after each 16 MiB for the host to strike in the middle, and "md5 big.bin HEX" for
# the host's second read path. Afterwards the whole file must be right.
MIB=${MIB:-256}
dd if=/dev/urandom of=/tmp/big bs=1M count="$MIB" status=none
source_md5=$(md5 /tmp/big)
echo "md5 big.bin $source_md5"
started=$(date +%s)
for i in $(seq 0 $((MIB / 16 - 1))); do
    dd if=/tmp/big of=big.bin bs=1M skip=$((i * 16)) seek=$((i * 16)) count=16 conv=notrunc status=none ||
        fail write-big "dd of MiB $((i * 16)) to $((i * 16 + 15)) failed"
    echo "progress $i"
done
check sync-big sync
echo "info: the writes took $(( $(date +%s) - started )) s"
ok write-big-returned
rm -f /tmp/big
drop_caches
check_eq size-big $((MIB * 1048576)) "$(stat -c %s big.bin)"
check_eq md5-big "$source_md5" "$(md5 big.bin)"
finish
