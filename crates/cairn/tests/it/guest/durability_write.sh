# Writes files of random data in several ways, plus some metadata changes, then syncs. Prints
# "md5 PATH HEX" for every file and "meta PATH MODE:SIZE:KIND" for a few entries, which the host
# checks again after a kill -9 and restart of the server.
mkdir -p durable/nested/deeper
n=0
for size in 1 4096 100000 1048593 3145728 5000000; do
    n=$((n + 1))
    head -c "$size" /dev/urandom > /tmp/file-$n
done
check write-cp cp /tmp/file-1 durable/file-1
check write-dd-fsync dd if=/tmp/file-2 of=durable/file-2 bs=1M conv=fsync status=none
check write-dd-direct dd if=/tmp/file-3 of=durable/nested/file-3 bs=64k oflag=direct status=none
check write-cat sh -c 'cat /tmp/file-4 > durable/nested/deeper/file-4'
check write-dd-small-blocks dd if=/tmp/file-5 of=durable/file-5 bs=7777 status=none
check write-then-rename sh -c 'cp /tmp/file-6 durable/file-6.tmp && mv durable/file-6.tmp durable/file-6'
echo "doomed" > durable/deleted.txt && rm durable/deleted.txt
ln -s nested/file-3 durable/link-to-3
chmod 640 durable/file-2
truncate -s 12345 durable/truncated.bin
sync
check_eq six-files 6 "$(find durable -name 'file-*' -type f | wc -l)"
for path in durable/file-1 durable/file-2 durable/nested/file-3 durable/nested/deeper/file-4 durable/file-5 durable/file-6 durable/truncated.bin; do
    echo "md5 $path $(md5 "$path")"
done
for path in durable/file-2 durable/nested durable/link-to-3 durable/truncated.bin; do
    echo "meta $path $(stat -c '%a:%s:%F' "$path" | tr ' ' '_')"
done
finish
