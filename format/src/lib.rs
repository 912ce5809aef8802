//! The contract between shardc's compiler and its runtime: every file they share, as
//! typed `Serialize + Deserialize` shapes, and the rules both apply to them. The
//! compiler writes these shapes and the runtime reads them through this crate; neither
//! indexes JSON by string keys.
//!
//! - [`names`] — device names (plain folder names) and plain file names;
//! - [`manifest`] — a package's `manifest.json` (format [`manifest::FORMAT`]) and
//!   `standby.json`, and the blake3 file hash they record;
//! - [`map`] — `transmission_map.json` (format [`map::FORMAT`]);
//! - [`plan`] — `plan.json` and the words of a planning request;
//! - [`problem`] — the partitioning problem and its one evaluator (carried by
//!   `balance.json`), and the typed device, unit and stage ids;
//! - [`balance`] — `balance.json` (runtime load balancing) and routing by it;
//! - [`cluster`] — `cluster.toml` and its addresses;
//! - [`frame`] — the metadata and control bodies of messages between client and devices;
//! - [`tensor`] — dtypes, shapes and endpoints as these files record them;
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
pub mod tensor;

pub use cluster::Cluster;
pub use files::{read_bounded, read_text};
pub use manifest::{hash_file, Manifest, Port, Standby};
pub use map::{Generation, Transfer, TransferKind, TransmissionMap};
pub use tensor::Endpoint;

/// The `format` number of a JSON file, read before anything else so that a file of
/// another format gets that error rather than a field's.
pub fn format_of(bytes: &[u8]) -> Option<u32> {
    #[derive(serde::Deserialize)]
    struct Versioned {
        format: u32,
    }
    serde_json::from_slice::<Versioned>(bytes).ok().map(|v| v.format)
}
