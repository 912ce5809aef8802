//! The contract between shardc's compiler and its runtime: every file they share, as
//! typed `Serialize + Deserialize` shapes, and the rules both apply to them. The
//! compiler writes these shapes and the runtime reads them through this crate; neither
//! indexes JSON by string keys.
//!
//! - [`names`] — device names (plain folder names) and plain file names;
//! - [`manifest`] — a package's `manifest.json` (format [`manifest::FORMAT`]) and
//!   `standby.json`, and the blake3 file hash they record;
//! - [`map`] — `transmission_map.json`;
//! - [`plan`] — `plan.json` and the words of a planning request;
//! - [`problem`] — the partitioning problem and its one evaluator (carried by `balance.json`);
//! - [`balance`] — `balance.json` (runtime load balancing) and routing by it;
//! - [`cluster`] — `cluster.toml` and its addresses;
//! - [`frame`] — the metadata and control bodies of messages between client and devices;
//! - [`files`] — reading files whose size nobody vouches for, with a bound.

pub mod balance;
pub mod cluster;
pub mod files;
pub mod frame;
pub mod manifest;
pub mod map;
pub mod names;
pub mod plan;
pub mod problem;

pub use cluster::Cluster;
pub use files::{read_bounded, read_text};
pub use manifest::{hash_file, Manifest, Port, Standby};
pub use map::{Generation, Transfer, TransferKind, TransmissionMap};
