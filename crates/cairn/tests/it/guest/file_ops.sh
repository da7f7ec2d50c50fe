# Symlinks, hard links, appends, overwrites in the middle, truncate down and up, and a script
# stored on the mount and run from there.

# ---- symbolic links
echo "the target" > target.txt
mkdir target-dir && echo inside > target-dir/inner.txt
check symlink-create ln -s target.txt link.txt
check symlink-dir-create ln -s target-dir link-dir
check symlink-dangling-create ln -s does-not-exist dangling
drop_caches
check_eq symlink-readlink target.txt "$(readlink link.txt)"
check_eq symlink-type "symbolic link" "$(stat -c %F link.txt)"
check_eq symlink-follow "the target" "$(cat link.txt)"
check_eq symlink-dir-follow inside "$(cat link-dir/inner.txt)"
check_eq symlink-dangling-readlink does-not-exist "$(readlink dangling)"
check symlink-dangling-no-target test ! -e dangling
echo "written through the link" > link.txt
drop_caches
check_eq symlink-write-through "written through the link" "$(cat target.txt)"
check symlink-remove rm link.txt
check symlink-remove-keeps-target test -f target.txt

# ---- hard links
echo "shared content" > hard-1.txt
check hardlink-create ln hard-1.txt hard-2.txt
drop_caches
check_eq hardlink-same-inode "$(stat -c %i hard-1.txt)" "$(stat -c %i hard-2.txt)"
check_eq hardlink-count-2 2 "$(stat -c %h hard-1.txt)"
echo "appended through the second name" >> hard-2.txt
drop_caches
check_eq hardlink-shared-content "$(printf 'shared content\nappended through the second name')" "$(cat hard-1.txt)"
check hardlink-remove-one rm hard-1.txt
drop_caches
check_eq hardlink-count-1 1 "$(stat -c %h hard-2.txt)"
check_eq hardlink-survives "$(printf 'shared content\nappended through the second name')" "$(cat hard-2.txt)"

# ---- appends with echo >>
echo "first line" >> appended.txt
echo "second line" >> appended.txt
echo "third line" >> appended.txt
drop_caches
printf 'first line\nsecond line\nthird line\n' > /tmp/appended.ref
check append-exact cmp appended.txt /tmp/appended.ref
check_eq append-size 34 "$(stat -c %s appended.txt)"

# ---- dd conv=notrunc in the middle of a 4 MiB file (aligned and unaligned)
head -c 4194304 /dev/urandom > /tmp/middle.ref
cp /tmp/middle.ref middle.bin
head -c 300000 /dev/urandom > /tmp/patch
dd if=/tmp/patch of=middle.bin bs=4096 seek=300 count=50 conv=notrunc status=none
dd if=/tmp/patch of=/tmp/middle.ref bs=4096 seek=300 count=50 conv=notrunc status=none
dd if=/tmp/patch of=middle.bin bs=300000 seek=2097151 count=1 oflag=seek_bytes conv=notrunc status=none
dd if=/tmp/patch of=/tmp/middle.ref bs=300000 seek=2097151 count=1 oflag=seek_bytes conv=notrunc status=none
drop_caches
check_eq notrunc-size 4194304 "$(stat -c %s middle.bin)"
check notrunc-content cmp middle.bin /tmp/middle.ref

# (the guest has no /dev/fd, so no <(...) process substitution)
# ---- truncate down, then up: the re-extended part reads as zeros
head -c 1048576 /dev/urandom > /tmp/trunc.ref
cp /tmp/trunc.ref trunc.bin
check truncate-down truncate -s 100000 trunc.bin
drop_caches
check_eq truncate-down-size 100000 "$(stat -c %s trunc.bin)"
head -c 100000 /tmp/trunc.ref > /tmp/trunc-100000.ref
check truncate-down-content cmp trunc.bin /tmp/trunc-100000.ref
check truncate-up truncate -s 300000 trunc.bin
drop_caches
check_eq truncate-up-size 300000 "$(stat -c %s trunc.bin)"
check truncate-up-kept cmp -n 100000 trunc.bin /tmp/trunc.ref
check truncate-up-zeros cmp -i 100000:0 -n 200000 trunc.bin /dev/zero
check truncate-zero truncate -s 0 trunc.bin
drop_caches
check_eq truncate-zero-size 0 "$(stat -c %s trunc.bin)"
# a write far past the end leaves a hole of zeros
printf 'end' | dd of=sparse.bin bs=1 seek=5000000 conv=notrunc status=none
drop_caches
check_eq sparse-size 5000003 "$(stat -c %s sparse.bin)"
check sparse-hole-zeros cmp -n 5000000 sparse.bin /dev/zero
check_eq sparse-tail end "$(tail -c 3 sparse.bin)"

# ---- a script on the mount, made executable and run from there
printf '#!/bin/sh\necho "hello from $(basename "$0") with $1"\n' > hello.sh
check chmod-x chmod +x hello.sh
drop_caches
check_eq exec-mode 755 "$(stat -c %a hello.sh)"
check_eq exec-relative "hello from hello.sh with one" "$(./hello.sh one)"
check_eq exec-absolute "hello from hello.sh with two" "$(/mnt/hello.sh two)"
chmod -x hello.sh
check_fails exec-denied-without-x "Permission denied" ./hello.sh three
finish
