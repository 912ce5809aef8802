//! The bodies of control messages (JSON in a frame's `info`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::balance::Route;

/// The body of a `rebalance` message: the new plan, the requests whose KV cache must
/// follow their layers, and where every crossing tensor goes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Rebalance {
    pub epoch: u64,
    /// Device of each stage, in pipeline order.
    pub stages: Vec<String>,
    /// Units `[start, end)` of each stage.
    pub ranges: Vec<[usize; 2]>,
    pub requests: Vec<u64>,
    pub routes: BTreeMap<String, Route>,
}

/// The body of a `ready` message.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Ready {
    pub epoch: u64,
    /// Why the device could not switch.
    pub error: Option<String>,
    /// Cutting and loading the new stage, ms.
    pub rebuild_ms: f64,
    /// KV-cache bytes this device sent to others.
    pub kv_sent_bytes: u64,
}
