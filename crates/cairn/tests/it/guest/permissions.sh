# Mode-bit checks for ordinary users: root (not squashed) prepares files of uid 1001, then
# util-linux setpriv (added to the guest by the test) runs commands as uid 1000 and 1001.
as_user() { local uid=$1; shift; setpriv --reuid="$uid" --regid="$uid" --clear-groups "$@"; }
as_user_in_group() { local uid=$1 group=$2; shift 2; setpriv --reuid="$uid" --regid="$uid" --groups="$group" "$@"; }
echo secret > private.txt && chown 1001:1001 private.txt && chmod 600 private.txt
echo public > public.txt && chown 1001:1001 public.txt && chmod 644 public.txt
echo team > team.txt && chown 1001:2000 team.txt && chmod 640 team.txt
mkdir home-1001 && chown 1001:1001 home-1001 && chmod 755 home-1001
echo mine > home-1001/owned.txt && chown 1001:1001 home-1001/owned.txt
drop_caches
check_eq setup-owner "1001 1001 600" "$(stat -c '%u %g %a' private.txt)"
check_eq setpriv-works "1000 1000" "$(as_user 1000 sh -c 'echo $(id -u) $(id -g)')"
check_fails other-cannot-read-0600 "Permission denied" as_user 1000 cat private.txt
check_eq owner-can-read-0600 secret "$(as_user 1001 cat private.txt)"
check_eq other-can-read-0644 public "$(as_user 1000 cat public.txt)"
check_fails other-cannot-write-0644 "Permission denied" as_user 1000 sh -c 'echo more >> public.txt'
check_eq owner-can-write-0644 "" "$(as_user 1001 sh -c 'echo more >> public.txt' 2>&1)"
check_eq group-member-can-read-0640 team "$(as_user_in_group 1000 2000 cat team.txt)"
check_fails non-member-cannot-read-0640 "Permission denied" as_user 1000 cat team.txt
check_fails other-cannot-create-in-0755-dir "Permission denied" as_user 1000 touch home-1001/intruder
check_fails other-cannot-remove-in-0755-dir "Permission denied" as_user 1000 rm -f home-1001/owned.txt
check_fails other-cannot-rename-in-0755-dir "Permission denied" as_user 1000 mv home-1001/owned.txt home-1001/renamed
check owner-can-create-in-0755-dir as_user 1001 touch home-1001/created
check_eq created-file-owner "1001 1001" "$(stat -c '%u %g' home-1001/created)"
check_fails other-cannot-chmod "Operation not permitted" as_user 1000 chmod 666 public.txt
check_fails other-cannot-chown "Operation not permitted" as_user 1001 chown 1000 public.txt
check_fails non-root-cannot-create-in-root-dir "Permission denied" as_user 1000 touch /mnt/not-mine
drop_caches
check_eq content-unchanged-after-denials "public
more" "$(cat public.txt)"
check_eq nothing-created-by-denied-users "created owned.txt" "$(ls home-1001 | tr '\n' ' ' | sed 's/ $//')"
finish
