//! Security: the built-in CA, workload identities and mTLS configs, and
//! PeerAuthentication modes.

pub mod authz;
pub mod ca;
pub mod jwt;
pub mod origination;
pub mod peer_auth;
pub mod tls;
