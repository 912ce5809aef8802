//! The distributed runtime over ZeroMQ: devices that run their package and send each
//! output straight to the devices that need it, and the client that drives generation.
//!
//! Every participant binds one PULL socket at its `cluster.toml` address and sends
//! with PUSH sockets to the others. A message is a frame sealed in the envelope of
//! [`crate::wire`] (encrypted and authenticated with the shared secret, unless
//! everyone runs `--insecure`), whose kind says what it is: `tensors` carries inputs
//! of a step, `done` tells the client a stage finished a step (with its compute
//! time), `end` frees a request's KV cache. A device keeps its layers' KV cache per
//! request; decode steps carry one token.
//!
//! Sessions: each `generate` opens one with a fresh random id (`open`, answered by
//! `opened` from every device, whose envelope carries the device's boot id). A device
//! holds one session: a new one drops the previous session's state, as do `close` and
//! a client that stays quiet longer than the session timeout. Messages of a session
//! that ended are dropped (counted as stale); a device asked about a session it never
//! opened (it restarted) answers `error`, and the client stops with an error naming it,
//! as it does when a device's boot id changes mid-session. Replayed messages are
//! dropped by sequence number ([`crate::wire::ReplayGuard`]).

mod client;
mod device;
mod feeder;
mod generation;
mod local;
mod net;
mod rebalance;
mod steps;

pub use crate::frame::{Ready, Rebalance};
pub use device::serve;
pub use generation::generate;
pub use local::{local, LocalOptions};

use std::time::Duration;

use crate::balance::{BalanceOptions, Decision, StageView};
use crate::wire::Dropped;

/// Why the distributed runtime stopped: a device named where one is to blame.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A device restarted mid-generation (its boot id changed): its KV cache is gone.
    #[error("device `{device}` restarted during generation: it lost this session's KV cache")]
    Restarted { device: String },
    /// A device reported that it could not do what was asked.
    #[error("device `{device}`: {message}")]
    Device { device: String, message: String },
    /// A package, map or file the runtime reads.
    #[error(transparent)]
    Runtime(#[from] crate::RuntimeError),
    /// Everything else: sockets, timeouts, malformed messages (the text says which).
    #[error("{0}")]
    Other(String),
}

impl From<String> for NetError {
    fn from(s: String) -> NetError {
        NetError::Other(s)
    }
}

impl From<&str> for NetError {
    fn from(s: &str) -> NetError {
        NetError::Other(s.to_string())
    }
}

/// Longest wait for a device the client accepts, seconds (a day).
pub const MAX_TIMEOUT_S: f64 = 86_400.0;

/// Most requests one generate drives at once.
pub const MAX_REQUESTS: usize = 4096;

/// Options shared by devices and the client.
#[derive(Clone)]
pub struct NetOptions {
    /// The key derived from the shared secret ([`key_from_secret`]); `None` only when
    /// the user chose `--insecure`.
    pub key: Option<[u8; 32]>,
    pub max_frame: usize,
    /// Emulate a slower device.
    pub slowdown: Slowdown,
    /// A device drops a session's state after this long without a message of it.
    pub session_timeout: Duration,
    /// A device runs the steps of all its requests that are ready as one batched step
    /// (`Session::run_batch`: the same bits as one by one).
    pub batch: bool,
}

/// Fewest bytes a secret file may hold.
pub const MIN_SECRET: usize = 16;

/// The frame key for the contents of a secret file.
pub fn key_from_secret(secret: &[u8]) -> Result<[u8; 32], String> {
    if secret.len() < MIN_SECRET {
        return Err(format!(
            "holds {} bytes; a shared secret needs at least {MIN_SECRET} (random bytes, e.g. `head -c 32 /dev/urandom`)",
            secret.len()
        ));
    }
    Ok(blake3::derive_key("shardc-run 2026 frame key (XChaCha20-Poly1305)", secret))
}

/// How often a waiting client tells the devices it is still there (a device ends a
/// session after `--session-timeout` without a message of it, at least
/// [`MIN_SESSION_TIMEOUT_S`]).
pub const KEEPALIVE: Duration = Duration::from_millis(500);

/// Shortest session timeout: several keepalives.
pub const MIN_SESSION_TIMEOUT_S: f64 = 2.0;

/// Emulated slowness: from decode step `from_step` on, each step takes `factor` times
/// its compute time (the device sleeps (F − 1) × compute after computing).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Slowdown {
    pub factor: f64,
    pub from_step: u64,
}

impl Slowdown {
    pub const NONE: Slowdown = Slowdown { factor: 1.0, from_step: 0 };

    /// The factor for a step.
    pub fn at(&self, step: u64) -> f64 {
        if step >= self.from_step {
            self.factor
        } else {
            1.0
        }
    }
}

/// What `generate` reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Generation {
    /// The prompt's length and the new tokens asked per request (with the stages'
    /// units, what `shardc plan --calibrate` needs to predict this run).
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    /// Per request, the generated tokens.
    pub tokens: Vec<Vec<i64>>,
    /// Per request, when each token was known, ms since the start.
    pub token_ms: Vec<Vec<f64>>,
    /// Per step of the first request, the number of token ids sent.
    pub ids_sent: Vec<usize>,
    /// Per device (in pipeline order): total compute and send ms, steps.
    pub stages: Vec<StageTiming>,
    pub wall_ms: f64,
    /// Load balancing, when the packages allow it and it is on.
    pub balance: Option<BalanceReport>,
    /// Messages the client dropped (refused, replayed, of other sessions).
    pub dropped: Dropped,
}

/// What load balancing did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BalanceReport {
    pub options: BalanceOptions,
    /// Every look at the measured times, moves and stays.
    pub decisions: Vec<Decision>,
    pub moves: usize,
    /// The plan at the end.
    pub plan: Vec<StageView>,
}

/// Timings of one stage.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StageTiming {
    pub device: String,
    /// The first and last unit the stage's package runs (at the start: load balancing
    /// may move them, which `balance` then reports).
    pub units: [String; 2],
    pub steps: usize,
    /// Totals over all steps and requests, milliseconds.
    pub compute_ms: f64,
    pub waiting_ms: f64,
    pub send_ms: f64,
    /// Per step of every request, in arrival order: (request, step, compute, waiting, send).
    pub per_step: Vec<(u64, u64, f64, f64, f64)>,
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct Job {
    pub prompt: Vec<i64>,
    /// New tokens per request.
    pub tokens: usize,
    /// Independent requests in flight together.
    pub requests: usize,
    /// How long to wait for a device.
    pub timeout: Duration,
    /// How long to wait for every device to answer the session's opening: devices
    /// may still be starting (loading and checking their packages).
    pub start_timeout: Duration,
    /// Move stage boundaries when measured times call for it (packages compiled with
    /// `--standby`); `None`: never.
    pub balance: Option<BalanceOptions>,
}
