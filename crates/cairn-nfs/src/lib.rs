//! NFS gateway (placeholder)
