//! Arbitrary bytes through record marking, the RPC call header and credentials, and the
//! arguments of every NFS, MOUNT and portmap procedure: nothing may panic or allocate from a
//! forged length.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cairn_nfs::fuzz_decode(data);
});
