//! `cluster.toml`: where each device (and the client) listens — its shape and address
//! rules live in the contract crate.

pub use shardc_format::cluster::*;
