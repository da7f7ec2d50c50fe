# cp -r of a tree, diff -r, mv of a file and a folder, rename over an existing file, rm -r, and
# rsync -a with modes and mtimes preserved.

# A source tree in the guest's tmpfs: nested folders, a few hundred files of various sizes,
# including empty ones and some over 1 MiB, with various modes and mtimes.
# (busybox head: a static binary starts 4x faster than the GNU one under emulation)
make_tree() {
    local root=$1 d i n size
    mkdir -p "$root"
    for d in a a/b a/b/c a/b/c/d e e/f g "h with space" "h with space/i"; do mkdir -p "$root/$d"; done
    n=0
    for d in . a a/b a/b/c a/b/c/d e e/f g "h with space" "h with space/i"; do
        for i in $(seq 1 30); do
            n=$((n + 1))
            case $((n % 10)) in
                0) size=0 ;;
                1) size=1 ;;
                2) size=4095 ;;
                3) size=4096 ;;
                4) size=65537 ;;
                *) size=$(( (n * 7919) % 20000 )) ;;
            esac
            busybox head -c "$size" /dev/urandom > "$root/$d/file-$i.bin"
        done
    done
    for i in 1 2 3; do head -c $((1048576 + i * 333333)) /dev/urandom > "$root/a/b/big-$i.bin"; done
    chmod 600 "$root/a/file-1.bin"; chmod 755 "$root/a/file-2.bin"; chmod 640 "$root/e/file-3.bin"
    chmod 700 "$root/g"; chmod 2755 "$root/e/f" 2>/dev/null || chmod 755 "$root/e/f"
    touch -d '2001-02-03 04:05:06' "$root/a/file-3.bin" "$root/e/f/file-4.bin"
    touch -d '2019-12-31 23:59:59' "$root/g/file-5.bin"
}
make_tree /tmp/src
check_eq tree-source-count 303 "$(find /tmp/src -type f | wc -l)"

# cp -r and diff -r, from the client's cache and again from the server
check cp-r cp -r /tmp/src tree
check diff-after-cp diff -r /tmp/src tree
drop_caches
check diff-after-cp-cold diff -r /tmp/src tree
check_eq count-after-cp "$(find /tmp/src | wc -l)" "$(find tree | wc -l)"

# mv of a folder and of a file
check mv-folder mv tree/a tree/a-moved
drop_caches
check mv-folder-old-gone test ! -e tree/a
check mv-folder-content diff -r /tmp/src/a tree/a-moved
check mv-file mv tree/e/file-7.bin tree/g/moved-7.bin
drop_caches
check mv-file-old-gone test ! -e tree/e/file-7.bin
check mv-file-content cmp /tmp/src/e/file-7.bin tree/g/moved-7.bin
check_eq mv-file-listing "moved-7.bin" "$(ls tree/g | grep moved)"

# rename over an existing file: the target now has the moved file's content
echo "the moved one" > over-src.txt
echo "the one replaced" > over-dst.txt
check mv-over-existing mv -f over-src.txt over-dst.txt
drop_caches
check_eq mv-over-content "the moved one" "$(cat over-dst.txt)"
check mv-over-source-gone test ! -e over-src.txt
check_eq mv-over-listing "over-dst.txt" "$(ls | grep '^over-')"

# rm -r of the whole tree
check rm-r rm -r tree
drop_caches
check rm-r-gone test ! -e tree
check_eq rm-r-listing "" "$(ls | grep -x tree)"

# rsync -a: identical content, modes and mtimes (files and folders)
check rsync-a rsync -a /tmp/src/ synced/
drop_caches
check diff-after-rsync diff -r /tmp/src synced
(cd /tmp/src && find . -exec stat -c '%n %a %Y %F' {} + | sort) > /tmp/src.meta
(cd synced && find . -exec stat -c '%n %a %Y %F' {} + | sort) > /tmp/synced.meta
check rsync-modes-mtimes diff /tmp/src.meta /tmp/synced.meta
# a second rsync finds nothing to transfer
check_eq rsync-again-nothing "" "$(rsync -a --itemize-changes /tmp/src/ synced/)"
finish
