# Writes 512 MiB through a virtual IP, then reads it back 16 MiB per dd while the host kills the
# node holding the VIP. "reading" is printed before the first read and "progress I" after each
# 16 MiB; the bytes read must be the bytes written.
dd if=/dev/urandom of=/tmp/big bs=1M count=512 status=none
source_md5=$(md5 /tmp/big)
check write-big dd if=/tmp/big of=big.bin bs=1M conv=fsync status=none
rm -f /tmp/big
drop_caches
echo "reading"
for i in $(seq 0 31); do
    dd if=big.bin bs=1M skip=$((i * 16)) count=16 status=none >> /tmp/back ||
        fail read-big "dd of MiB $((i * 16)) to $((i * 16 + 15)) failed"
    echo "progress $i"
done
ok read-big-returned
check_eq size-back 536870912 "$(stat -c %s /tmp/back)"
check_eq md5-back "$source_md5" "$(md5 /tmp/back)"
finish
