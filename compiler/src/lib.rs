//! shardc: a compiler that partitions transformer language models across devices.
//!
//! This crate holds the frontends (model files into IR), the reports, and the `shardc`
//! command-line interface.

pub mod cli;
pub mod emit;
pub mod frontend;
pub mod inputs;
pub mod inspect;
pub mod load;
pub mod render;
pub mod report;
pub mod run;
pub mod verify;
