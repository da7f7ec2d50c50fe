# A file read while another process appends to it, and two processes writing different regions
# of one file at the same time.

# ---- one writer appends numbered lines (each append is its own open/write/close, so the client
# sends it to the server at close); readers meanwhile re-read the file with O_DIRECT (straight from
# the server) and follow it with tail -f. Every snapshot must be a prefix of the final content.
LINES=${LINES_TO_APPEND:-100}
seq -f 'line %g of the log' 1 "$LINES" > /tmp/log.ref
: > log.txt
(
    for i in $(seq 1 "$LINES"); do
        echo "line $i of the log" >> log.txt
        [ $((i % 20)) = 0 ] && sync
    done
) &
writer=$!
tail -f -n +1 log.txt > /tmp/tail.out 2>/tmp/tail.err &
tailer=$!
mkdir /tmp/snapshots
snapshot=0
while kill -0 "$writer" 2>/dev/null; do
    snapshot=$((snapshot + 1))
    dd if=log.txt of=/tmp/snapshots/$snapshot bs=1M iflag=direct status=none
    busybox usleep 20000
done
wait "$writer"
final_size=$(stat -c %s /tmp/log.ref)
# tail -f polls (no inotify on NFS): give it a few seconds to catch up
for _ in $(seq 1 20); do
    [ "$(stat -c %s /tmp/tail.out)" -ge "$final_size" ] && break
    sleep 0.5
done
kill "$tailer"
check_eq append-final-content "$(md5 /tmp/log.ref)" "$(md5 log.txt)"
drop_caches
check append-final-content-cold cmp log.txt /tmp/log.ref
check tail-f-saw-everything cmp /tmp/tail.out /tmp/log.ref
bad_snapshots="" previous_size=0 distinct_sizes=0
for i in $(seq 1 "$snapshot"); do
    size=$(stat -c %s /tmp/snapshots/$i)
    cmp -s -n "$size" /tmp/snapshots/$i /tmp/log.ref || bad_snapshots="$bad_snapshots $i(not a prefix)"
    [ "$size" -lt "$previous_size" ] && bad_snapshots="$bad_snapshots $i(shrank $previous_size->$size)"
    [ "$size" != "$previous_size" ] && distinct_sizes=$((distinct_sizes + 1))
    previous_size=$size
done
check_eq reader-snapshots-are-prefixes "" "$bad_snapshots"
# the reader did run while the file grew (more than one size seen)
check reader-saw-growth test "$distinct_sizes" -ge 3
echo "info: $snapshot snapshots, $distinct_sizes distinct sizes"

# ---- two writers, different regions of one file, at the same time: first through the page
# cache, then with O_DIRECT (every write its own WRITE call) in unaligned 10000-byte blocks, the
# boundary between the regions inside a page
head -c 4194304 /dev/urandom > /tmp/region-a
head -c 4194304 /dev/urandom > /tmp/region-b
for mode in buffered direct; do
    flag=""; [ "$mode" = direct ] && flag="oflag=direct"
    rm -f regions-$mode.bin
    if [ "$mode" = buffered ]; then boundary=4194304; bs=65536; else boundary=4190000; bs=10000; fi
    # writer a: [0, boundary); writer b: [boundary, boundary + 4 MiB)
    dd if=/tmp/region-a of=regions-$mode.bin bs=$bs count=$((boundary / bs)) conv=notrunc,fsync $flag status=none &
    a=$!
    dd if=/tmp/region-b of=regions-$mode.bin bs=$bs seek=$boundary oflag=seek_bytes conv=notrunc,fsync $flag status=none &
    b=$!
    wait $a; rc_a=$?
    wait $b; rc_b=$?
    check_eq two-writers-$mode-exit "0 0" "$rc_a $rc_b"
    drop_caches
    check_eq two-writers-$mode-size $((boundary + 4194304)) "$(stat -c %s regions-$mode.bin)"
    check two-writers-$mode-region-a cmp -n $boundary regions-$mode.bin /tmp/region-a
    check two-writers-$mode-region-b cmp -i $boundary:0 regions-$mode.bin /tmp/region-b
done
finish
