//! The contract between shardc's compiler and its runtime: every file they share, as
//! typed `Serialize + Deserialize` shapes, and the rules both apply to them. The
//! compiler writes these shapes and the runtime reads them through this crate; neither
//! indexes JSON by string keys.
//!
//! - [`names`] — device names (plain folder names) and plain file names;
//! - [`manifest`] — a package's `manifest.json` (format [`manifest::FORMAT`]) and
//!   `standby.json`, and the blake3 file hash they record;
//! - [`map`] — `transmission_map.json`;
//! - [`cluster`] — `cluster.toml` and its addresses;
//! - [`files`] — reading files whose size nobody vouches for, with a bound.

pub mod cluster;
pub mod files;
pub mod manifest;
pub mod map;
pub mod names;

pub use cluster::Cluster;
pub use files::{read_bounded, read_text};
pub use manifest::{hash_file, Manifest, Port, Standby};
pub use map::{Generation, Transfer, TransferKind, TransmissionMap};
