//! TLS interception material: the local CA (load, create 0600, describe), leaf certificate
//! parameters, and a bounded cache of per-host server configs.

pub mod ca;
mod cache;
pub mod leaf;

pub use ca::{create, describe, trust_instructions, CaError, CaFiles, CertificateAuthority};
pub use cache::LeafCache;
