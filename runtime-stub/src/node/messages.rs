//! The bodies of control messages (JSON in a frame's `info`): their shapes live with
//! the rest of the frame metadata in `shardc_format::frame`.

pub use shardc_format::frame::{Ready, Rebalance};
