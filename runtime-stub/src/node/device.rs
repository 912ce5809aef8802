//! A serving device: its package, its session and KV caches, its stage (which
//! rebalancing may move), and what it does with each message.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::frame::{Body, Frame, Kind};
use crate::generate::{cache_entries, CacheEntry};
use crate::package::{self, HeldUnits};
use crate::weights::WeightFiles;
use crate::wire::{session_text, Envelope, SessionId};
use crate::{Session, Tensor};
use shardc_format::Cluster;

use super::net::Net;
use super::*;

/// What a device runs now.
pub(super) struct Active {
    pub(super) session: Session,
    /// Units `[start, end)`, when the package says (standby units).
    pub(super) range: Option<[usize; 2]>,
    /// Inputs that arrive from the client or other devices.
    pub(super) needed: Vec<String>,
    /// The stage's KV-cache entries (past input, present output, empty shape).
    pub(super) cache: Vec<CacheEntry>,
    /// Who receives each output.
    pub(super) peers_of: HashMap<String, Vec<String>>,
}

/// A KV-cache handover in progress: the entries still to arrive.
pub(super) struct Handover {
    pub(super) ready: Ready,
    pub(super) missing: BTreeSet<(u64, String)>,
}

/// Why a session ends when its client closes it.
const CLOSED: &str = "the client closed it";

/// Most messages taken without waiting before the ready steps run (a flood of
/// messages does not hold the steps back).
const MAX_DRAINED: usize = 256;

/// Most ended sessions a device remembers (their messages are then stale).
const ENDED_SESSIONS: usize = 4096;

/// One serving device.
pub(super) struct Device<'a> {
    pub(super) name: String,
    /// The package's weight files (hash-checked), shared by every stage cut from it.
    pub(super) weights: WeightFiles,
    pub(super) net: Net<'a>,
    pub(super) opts: &'a NetOptions,
    pub(super) held: Option<HeldUnits>,
    pub(super) active: Active,
    /// The stage the package was compiled with: every session starts from it.
    pub(super) initial: Initial,
    /// The session this device serves, and when it last heard of it.
    pub(super) session: Option<(SessionId, Instant)>,
    pub(super) ended: VecDeque<SessionId>,
    pub(super) pending: HashMap<(u64, u64), HashMap<String, Tensor>>,
    /// When the first input of a step arrived: the wait for the others is reported.
    pub(super) first_arrival: HashMap<(u64, u64), Instant>,
    pub(super) caches: HashMap<u64, HashMap<String, Tensor>>,
    /// Steps with every input here, waiting to run together ([`Device::run_ready`]),
    /// and since when the first of them waits.
    pub(super) ready: Vec<(u64, u64)>,
    pub(super) ready_since: Option<Instant>,
    /// Requests whose last step ran here and that have not ended: when that step
    /// finished, and how long the one before took to come back (its round trip through
    /// the other stages and the client). A batch waits a little for those due soon
    /// ([`Device::batch_wait`]).
    pub(super) expected: HashMap<u64, (Instant, Option<Duration>)>,
    /// The last batch's compute time.
    pub(super) last_batch: Duration,
    pub(super) handover: Option<Handover>,
}

/// What a device runs when a session starts.
pub(super) struct Initial {
    range: Option<[usize; 2]>,
    needed: Vec<String>,
    peers_of: HashMap<String, Vec<String>>,
}

impl Device<'_> {
    pub(super) fn send_to(&mut self, peer: &str, frame: &Frame) -> Result<(), NetError> {
        let session = self.session.map(|s| s.0).ok_or("no session is open")?;
        self.net.send(peer, &session, frame).map_err(|e| NetError::Other(format!("{}: {e}", self.name)))
    }

    /// Tell the client (of `session`) what went wrong.
    pub(super) fn report_error(
        &mut self,
        session: &SessionId,
        request: u64,
        step: u64,
        message: String,
    ) -> Result<(), NetError> {
        let f = Frame::new(request, step, &self.name.clone(), Body::Error(message));
        self.net.send("client", session, &f).map_err(|e| NetError::Other(format!("{}: {e}", self.name)))
    }

    /// Drop the current session's state (KV caches, steps waiting for inputs, a
    /// handover) and remember it as ended.
    fn end_session(&mut self, why: &str) {
        if let Some((id, _)) = self.session.take() {
            let requests = self.caches.len();
            self.caches.clear();
            self.pending.clear();
            self.ready.clear();
            self.ready_since = None;
            self.expected.clear();
            self.first_arrival.clear();
            self.handover = None;
            self.net.guard.forget(&id);
            self.remember_ended(id);
            // A client closing its own session after its requests ended is no news.
            if requests > 0 || why != CLOSED {
                eprintln!(
                    "{}: session {} ended ({why}); dropped the state of {requests} requests",
                    self.name,
                    session_text(&id)
                );
            }
        }
    }

    fn remember_ended(&mut self, id: SessionId) {
        if self.ended.len() >= ENDED_SESSIONS {
            self.ended.pop_front();
        }
        self.ended.push_back(id);
    }

    /// Start `id`: the previous session ends, and the stage is the package's again.
    fn open_session(&mut self, id: SessionId) -> Result<(), NetError> {
        self.end_session("a new session started");
        if self.active.range != self.initial.range {
            if let (Some(held), Some(range)) = (&self.held, self.initial.range) {
                let session = Session::with_weights(held.stage(range)?, self.weights.clone());
                self.active.cache = cache_entries(session.graph());
                self.active.session = session;
            }
        }
        self.active.range = self.initial.range;
        self.active.needed = self.initial.needed.clone();
        self.active.peers_of = self.initial.peers_of.clone();
        self.session = Some((id, Instant::now()));
        let f = Frame::control(&self.name.clone(), Body::Opened);
        self.send_to("client", &f)
    }

    /// Handle one message; `Ok(false)` to stop serving.
    fn on_message(&mut self, env: Envelope, msg: Frame) -> Result<bool, NetError> {
        if msg.body == Body::Stop {
            return Ok(false);
        }
        if msg.body == Body::Open {
            if msg.sender != "client" {
                self.net.dropped.refused += 1;
            } else if self.ended.contains(&env.session) {
                self.net.dropped.stale += 1;
            } else if self.session.is_some_and(|s| s.0 == env.session) {
                // The client asks again (an answer may have gone to a connection that
                // had just died): answer again, keeping the session's state.
                let f = Frame::control(&self.name.clone(), Body::Opened);
                self.send_to("client", &f)?;
            } else {
                self.open_session(env.session)?;
            }
            return Ok(true);
        }
        match self.session {
            Some((id, ref mut seen)) if id == env.session => *seen = Instant::now(),
            _ => {
                if self.ended.contains(&env.session) {
                    self.net.dropped.stale += 1;
                    self.net.log("dropped a message of a session that ended", self.net.dropped.stale);
                    if msg.sender == "client" && msg.body != Body::Close {
                        let why = "its session ended or was superseded by a newer one (another client?)".to_string();
                        self.report_error(&env.session, msg.request, msg.step, why)?;
                    }
                } else if msg.body != Body::Close {
                    let why = format!(
                        "does not hold session {} (it was restarted, or never opened it): its KV cache is gone",
                        session_text(&env.session)
                    );
                    eprintln!("{}: {why}", self.name);
                    self.report_error(&env.session, msg.request, msg.step, why)?;
                }
                return Ok(true);
            }
        }
        let (request, step) = (msg.request, msg.step);
        if !matches!(msg.body, Body::Tensors(_) | Body::Alive) {
            // What changes the stage or the caches happens after the steps before it.
            self.run_ready()?;
        }
        match msg.body {
            Body::Alive => {}
            Body::Close => self.end_session(CLOSED),
            Body::End => {
                self.caches.remove(&request);
                self.expected.remove(&request);
            }
            Body::Tensors(tensors) => self.on_tensors((request, step), tensors)?,
            Body::Rebalance(plan) => self.on_rebalance(&plan)?,
            Body::Kv { tensors, .. } => self.on_kv(request, tensors)?,
            Body::Unreadable { kind: Kind::Rebalance, why } => {
                let error = format!("malformed rebalance message from `{}`: {why}", msg.sender);
                eprintln!("{}: {error}", self.name);
                self.report_ready(&Ready { error: Some(error), ..Default::default() })?;
            }
            Body::Unreadable { kind, why } => {
                eprintln!("{}: dropped a `{kind}` message from `{}`: {why}", self.name, msg.sender);
                if msg.sender == "client" {
                    let session = self.session.map(|s| s.0).ok_or("no session is open")?;
                    self.report_error(&session, request, step, why)?;
                }
            }
            // Messages only the client takes (and `Stop`/`Open`, handled above).
            other @ (Body::Done(_) | Body::Ready(_) | Body::Opened | Body::Error(_) | Body::Stop | Body::Open) => {
                eprintln!("{}: ignored a `{}` message from `{}`", self.name, other.kind(), msg.sender)
            }
        }
        Ok(true)
    }

    fn on_tensors(&mut self, key: (u64, u64), tensors: Vec<(String, Tensor)>) -> Result<(), NetError> {
        let device = self.name.clone();
        self.first_arrival.entry(key).or_insert_with(Instant::now);
        let entry = self.pending.entry(key).or_default();
        for (name, t) in tensors {
            if self.active.needed.contains(&name) {
                entry.insert(name, t);
            } else {
                eprintln!("{device}: dropped tensor `{name}` it does not take");
            }
        }
        // A step already waiting to run is not queued twice (a tensor sent again).
        if self.active.needed.iter().all(|n| entry.contains_key(n)) && !self.ready.contains(&key) {
            if let Some((finished, trip)) = self.expected.get_mut(&key.0) {
                *trip = Some(finished.elapsed());
            }
            self.ready.push(key);
            self.ready_since.get_or_insert_with(Instant::now);
        }
        Ok(())
    }
}

/// Run one device until a `stop` message (or `stop` is set).
pub fn serve(
    out: &Path,
    device: &str,
    cluster: &Cluster,
    ctx: &zmq::Context,
    opts: &NetOptions,
    stop: Arc<AtomicBool>,
) -> Result<(), NetError> {
    shardc_passes::devices::check_name(device).map_err(|e| format!("--device: {e}"))?;
    let dir = out.join(device);
    let (manifest, graph) = package::load(&dir)?;
    let held = package::load_standby(&dir, &manifest)?;
    let range = held.as_ref().and_then(|h| {
        let first = h.standby.units.iter().position(|u| *u == manifest.units[0])?;
        let last = h.standby.units.iter().position(|u| *u == manifest.units[1])?;
        Some([h.standby.first + first, h.standby.first + last + 1])
    });
    if held.is_some() && range.is_none() {
        return Err(format!("{}: the stage's units are not among the units it holds", dir.display()).into());
    }
    let mut graphs = vec![&graph];
    graphs.extend(held.as_ref().map(|h| &h.graph));
    let weights = package::weights(&dir, &manifest, &graphs)?;
    let session = Session::with_weights(graph, weights.clone());
    // Weights loaded and mapped bytes brought in before the device reports ready: the
    // first request then costs what the others do.
    session.warm().map_err(|e| format!("{}: {e}", dir.display()))?;
    if let Some(rss) = crate::weights::resident_bytes() {
        let weights: u64 = manifest
            .files
            .keys()
            .filter(|f| f.ends_with(".safetensors"))
            .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
            .map(|m| m.len())
            .sum();
        let mb = |b: u64| b as f64 / f64::from(1 << 20);
        eprintln!(
            "{device}: weights loaded; process resident {:.0} MB, package weights {:.0} MB",
            mb(rss),
            mb(weights)
        );
    }
    let net = Net::bind(device, cluster, ctx, opts)?;
    let initial = Initial {
        range,
        needed: manifest.inputs.iter().map(|p| p.name.clone()).collect(),
        // By cluster name: `client` or the device's.
        peers_of: manifest
            .outputs
            .iter()
            .map(|p| (p.name.clone(), p.peers.iter().map(|e| e.name().to_string()).collect()))
            .collect(),
    };
    let active = Active {
        cache: cache_entries(session.graph()),
        session,
        range,
        needed: initial.needed.clone(),
        peers_of: initial.peers_of.clone(),
    };
    let mut d = Device {
        name: device.to_string(),
        weights,
        net,
        opts,
        held,
        active,
        initial,
        session: None,
        ended: VecDeque::new(),
        pending: HashMap::new(),
        first_arrival: HashMap::new(),
        caches: HashMap::new(),
        ready: Vec::new(),
        ready_since: None,
        expected: HashMap::new(),
        last_batch: Duration::ZERO,
        handover: None,
    };
    let mut worked = false;
    'serve: while !stop.load(Ordering::Relaxed) {
        let Some((env, msg)) = d.net.receive(Duration::from_millis(200))? else {
            // A client that went quiet (killed, say) does not keep the cache alive.
            if d.session.is_some_and(|(_, seen)| seen.elapsed() > opts.session_timeout) {
                d.end_session("its client went quiet");
            }
            // Idle for 200 ms after work: what the steps freed goes back to the system.
            if std::mem::take(&mut worked) {
                crate::weights::give_back_free_memory();
            }
            continue;
        };
        worked = true;
        if !d.on_message(env, msg)? {
            break;
        }
        // Every message already here is taken before the ready steps run: the steps of
        // all requests that are ready run as one batch.
        for _ in 0..MAX_DRAINED {
            let wait = d.batch_wait().unwrap_or(Duration::ZERO);
            let Some((env, msg)) = d.net.receive(wait)? else { break };
            if !d.on_message(env, msg)? {
                break 'serve;
            }
        }
        d.run_ready()?;
    }
    let dropped = &d.net.dropped;
    if dropped.total() > 0 {
        eprintln!(
            "{device}: dropped {} messages ({} refused, {} replayed, {} of ended sessions)",
            dropped.total(),
            dropped.refused,
            dropped.replayed,
            dropped.stale
        );
    }
    Ok(())
}
