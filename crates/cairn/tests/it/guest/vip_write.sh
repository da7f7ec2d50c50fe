# 512 MiB of random data written through a virtual IP, 16 MiB per dd, while the host kills the
# node holding the VIP or moves it (hard mount: the client waits and retries). Prints "progress I"
# after each 16 MiB for the host to strike in the middle, and "md5 big.bin HEX". Afterwards the
# whole file must be right, read back through the VIP.
dd if=/dev/urandom of=/tmp/big bs=1M count=512 status=none
source_md5=$(md5 /tmp/big)
echo "md5 big.bin $source_md5"
started=$(date +%s)
for i in $(seq 0 31); do
    dd if=/tmp/big of=big.bin bs=1M skip=$((i * 16)) seek=$((i * 16)) count=16 conv=notrunc status=none ||
        fail write-big "dd of MiB $((i * 16)) to $((i * 16 + 15)) failed"
    echo "progress $i"
done
check sync-big sync
echo "info: the writes took $(( $(date +%s) - started )) s"
ok write-big-returned
rm -f /tmp/big
drop_caches
check_eq size-big 536870912 "$(stat -c %s big.bin)"
check_eq md5-big "$source_md5" "$(md5 big.bin)"
echo "arp $(cat /proc/net/arp | tr '\n' ' ')"
finish
