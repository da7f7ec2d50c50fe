# 256 MiB (BIG_MIB) of random data: written through the mount with fsync, read back after
# dropping the caches. Prints "md5 big.bin HEX" for the host's second read path.
BIG_MIB=${BIG_MIB:-256}
dd if=/dev/urandom of=/tmp/big bs=1M count="$BIG_MIB" status=none
source_md5=$(md5 /tmp/big)
echo "md5 big.bin $source_md5"
check write-big dd if=/tmp/big of=big.bin bs=1M conv=fsync status=none
rm -f /tmp/big
drop_caches
check_eq size-big $((BIG_MIB * 1048576)) "$(stat -c %s big.bin)"
check_eq md5-big "$source_md5" "$(md5 big.bin)"
finish
