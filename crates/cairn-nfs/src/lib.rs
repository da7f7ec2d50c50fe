//! The NFS gateway: ONC RPC over TCP, NFSv3, MOUNT v3 and a portmapper v2 answer, on top of a
//! [`cairn_store::Store`].

pub mod exports;
