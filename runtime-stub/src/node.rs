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
//! dropped by sequence number ([`ReplayGuard`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::{ArrayD, IxDyn};
use serde::{Deserialize, Serialize};

use crate::balance::{BalanceOptions, BalanceSpec, Balancer, Decision, Route, StageView};
use crate::cluster::Cluster;
use crate::frame::{self, Frame};
use crate::generate::{argmax, cache_entries, CacheEntry};
use crate::package::{self, HeldUnits};
use crate::weights::WeightFiles;
use crate::wire::{session_text, Dropped, Envelope, ReplayGuard, SessionId, Wire};
use crate::{Session, Tensor};

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

/// Kinds of message, and who may send them.
const KINDS: [&str; 12] =
    ["tensors", "done", "end", "stop", "rebalance", "kv", "ready", "open", "opened", "close", "error", "alive"];

/// How often a waiting client tells the devices it is still there (a device ends a
/// session after `--session-timeout` without a message of it, at least
/// [`MIN_SESSION_TIMEOUT_S`]).
pub const KEEPALIVE: Duration = Duration::from_millis(500);

/// Shortest session timeout: several keepalives.
pub const MIN_SESSION_TIMEOUT_S: f64 = 2.0;

/// One participant's end of the network: its bound socket, connections to the others,
/// the envelope, the replay guard and what was dropped.
struct Net<'a> {
    me: String,
    cluster: &'a Cluster,
    ctx: &'a zmq::Context,
    socket: zmq::Socket,
    peers: HashMap<String, zmq::Socket>,
    wire: Wire,
    guard: ReplayGuard,
    dropped: Dropped,
    max_frame: usize,
}

impl<'a> Net<'a> {
    /// Bind `me`'s address from the cluster file.
    fn bind(me: &str, cluster: &'a Cluster, ctx: &'a zmq::Context, opts: &NetOptions) -> Result<Net<'a>, String> {
        let address = cluster.address(me).ok_or_else(|| format!("`{me}` is not in the cluster file"))?;
        let socket = ctx.socket(zmq::PULL).map_err(|e| e.to_string())?;
        // Larger messages are dropped by ZeroMQ before they are allocated.
        let limit = opts.max_frame.saturating_add(64).min(i64::MAX as usize) as i64;
        socket.set_maxmsgsize(limit).map_err(|e| e.to_string())?;
        socket.bind(address).map_err(|e| format!("{me}: cannot bind {address}: {e}"))?;
        Ok(Net {
            me: me.to_string(),
            cluster,
            ctx,
            socket,
            peers: HashMap::new(),
            wire: Wire::new(opts.key.as_ref(), opts.max_frame)?,
            guard: ReplayGuard::default(),
            dropped: Dropped::default(),
            max_frame: opts.max_frame,
        })
    }

    /// Seal and send a frame to a device or the client, by its name in the cluster file.
    fn send(&mut self, who: &str, session: &SessionId, frame: &Frame) -> Result<(), String> {
        let address = self.cluster.address(who).ok_or_else(|| format!("`{who}` is not in the cluster file"))?;
        if !self.peers.contains_key(who) {
            let s = self.ctx.socket(zmq::PUSH).map_err(|e| e.to_string())?;
            s.set_linger(1000).map_err(|e| e.to_string())?;
            s.connect(address).map_err(|e| format!("cannot connect to `{who}` at {address}: {e}"))?;
            self.peers.insert(who.to_string(), s);
        }
        let parts = self.wire.seal(session, frame::encode(frame))?;
        self.peers[who].send_multipart(parts, 0).map_err(|e| format!("cannot send to `{who}` at {address}: {e}"))
    }

    /// Receive one message, or `Ok(None)` on timeout. What is malformed, fails
    /// authentication, comes from no participant or repeats a message is dropped and
    /// counted.
    fn receive(&mut self, timeout: Duration) -> Result<Option<(Envelope, Frame)>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.socket.poll(zmq::POLLIN, left.as_millis() as i64).map_err(|e| e.to_string())? == 0 {
                return Ok(None);
            }
            let mut parts = self.socket.recv_multipart(0).map_err(|e| e.to_string())?;
            let opened =
                self.wire.open(&mut parts).map_err(|e| e.to_string()).and_then(|(env, body)| {
                    Ok((env, frame::decode(&body, self.max_frame).map_err(|e| e.to_string())?))
                });
            let (env, frame) = match opened {
                Ok(m) => m,
                Err(e) => {
                    self.dropped.refused += 1;
                    self.log(&format!("dropped a message: {e}"), self.dropped.refused);
                    continue;
                }
            };
            if !KINDS.contains(&frame.kind.as_str()) || self.cluster.address(&frame.sender).is_none() {
                self.dropped.refused += 1;
                let why = format!("dropped a `{}` message from `{}`: unknown kind or sender", frame.kind, frame.sender);
                self.log(&why, self.dropped.refused);
                continue;
            }
            if !self.guard.accept(&frame.sender, &env) {
                self.dropped.replayed += 1;
                let why = format!("dropped a replayed `{}` message from `{}`", frame.kind, frame.sender);
                self.log(&why, self.dropped.replayed);
                continue;
            }
            return Ok(Some((env, frame)));
        }
    }

    /// Log the first 16 drops of a kind, then the 32nd, 64th … (a flood does not flood
    /// the log).
    fn log(&self, what: &str, count: u64) {
        if count <= 16 || count.is_power_of_two() {
            eprintln!("{}: {what} ({count} so far)", self.me);
        }
    }
}

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

/// What a device runs now.
struct Active {
    session: Session,
    /// Units `[start, end)`, when the package says (standby units).
    range: Option<[usize; 2]>,
    /// Inputs that arrive from the client or other devices.
    needed: Vec<String>,
    /// The stage's KV-cache entries (past input, present output, empty shape).
    cache: Vec<CacheEntry>,
    /// Who receives each output.
    peers_of: HashMap<String, Vec<String>>,
}

/// A KV-cache handover in progress: the entries still to arrive.
struct Handover {
    ready: Ready,
    missing: BTreeSet<(u64, String)>,
}

/// Most ended sessions a device remembers (their messages are then stale).
const ENDED_SESSIONS: usize = 4096;

/// One serving device.
struct Device<'a> {
    name: String,
    /// The package's weight files (hash-checked), shared by every stage cut from it.
    weights: WeightFiles,
    net: Net<'a>,
    opts: &'a NetOptions,
    held: Option<HeldUnits>,
    active: Active,
    /// The stage the package was compiled with: every session starts from it.
    initial: Initial,
    /// The session this device serves, and when it last heard of it.
    session: Option<(SessionId, Instant)>,
    ended: VecDeque<SessionId>,
    pending: HashMap<(u64, u64), HashMap<String, Tensor>>,
    /// When the first input of a step arrived: the wait for the others is reported.
    first_arrival: HashMap<(u64, u64), Instant>,
    caches: HashMap<u64, HashMap<String, Tensor>>,
    handover: Option<Handover>,
}

/// What a device runs when a session starts.
struct Initial {
    range: Option<[usize; 2]>,
    needed: Vec<String>,
    peers_of: HashMap<String, Vec<String>>,
}

impl Device<'_> {
    fn send_to(&mut self, peer: &str, frame: &Frame) -> Result<(), String> {
        let session = self.session.map(|s| s.0).ok_or("no session is open")?;
        self.net.send(peer, &session, frame).map_err(|e| format!("{}: {e}", self.name))
    }

    /// Tell the client (of `session`) what went wrong.
    fn report_error(&mut self, session: &SessionId, request: u64, step: u64, message: String) -> Result<(), String> {
        let mut f = Frame::new("error", request, step, &self.name.clone(), vec![]);
        f.info = message;
        self.net.send("client", session, &f).map_err(|e| format!("{}: {e}", self.name))
    }

    /// Drop the current session's state (KV caches, steps waiting for inputs, a
    /// handover) and remember it as ended.
    fn end_session(&mut self, why: &str) {
        if let Some((id, _)) = self.session.take() {
            let requests = self.caches.len();
            self.caches.clear();
            self.pending.clear();
            self.first_arrival.clear();
            self.handover = None;
            self.net.guard.forget(&id);
            self.remember_ended(id);
            eprintln!(
                "{}: session {} ended ({why}); dropped the state of {requests} requests",
                self.name,
                session_text(&id)
            );
        }
    }

    fn remember_ended(&mut self, id: SessionId) {
        if self.ended.len() >= ENDED_SESSIONS {
            self.ended.pop_front();
        }
        self.ended.push_back(id);
    }

    /// Start `id`: the previous session ends, and the stage is the package's again.
    fn open_session(&mut self, id: SessionId) -> Result<(), String> {
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
        let f = Frame::new("opened", 0, 0, &self.name.clone(), vec![]);
        self.send_to("client", &f)
    }

    /// Handle one message; `Ok(false)` to stop serving.
    fn on_message(&mut self, env: Envelope, msg: Frame) -> Result<bool, String> {
        if msg.kind == "stop" {
            return Ok(false);
        }
        if msg.kind == "open" {
            if msg.sender != "client" {
                self.net.dropped.refused += 1;
            } else if self.ended.contains(&env.session) || self.session.is_some_and(|s| s.0 == env.session) {
                self.net.dropped.stale += 1;
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
                    if msg.sender == "client" && msg.kind != "close" {
                        let why = "its session ended or was superseded by a newer one (another client?)".to_string();
                        self.report_error(&env.session, msg.request, msg.step, why)?;
                    }
                } else if msg.kind != "close" {
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
        match msg.kind.as_str() {
            "alive" => {}
            "close" => self.end_session("the client closed it"),
            "end" => {
                self.caches.remove(&msg.request);
            }
            "tensors" => self.on_tensors(msg)?,
            "rebalance" => self.on_rebalance(&msg)?,
            "kv" => self.on_kv(msg)?,
            other => eprintln!("{}: ignored a `{other}` message", self.name),
        }
        Ok(true)
    }

    fn on_tensors(&mut self, msg: Frame) -> Result<(), String> {
        let device = self.name.clone();
        let key = (msg.request, msg.step);
        self.first_arrival.entry(key).or_insert_with(Instant::now);
        let entry = self.pending.entry(key).or_default();
        for (name, t) in msg.tensors {
            if self.active.needed.contains(&name) {
                entry.insert(name, t);
            } else {
                eprintln!("{device}: dropped tensor `{name}` it does not take");
            }
        }
        if !self.active.needed.iter().all(|n| entry.contains_key(n)) {
            return Ok(());
        }
        let waited_ms = self.first_arrival.remove(&key).map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3);
        let mut inputs: Vec<(String, Tensor)> = self.pending.remove(&key).unwrap_or_default().into_iter().collect();
        let cache = self.caches.entry(key.0).or_default();
        for entry in &self.active.cache {
            let t = cache.remove(&entry.past).unwrap_or_else(|| Tensor::f32(ArrayD::zeros(IxDyn(&entry.empty_shape))));
            inputs.push((entry.past.clone(), t));
        }
        let started = Instant::now();
        let outputs = match self.active.session.run(inputs) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("{device}: request {} step {}: {e}", key.0, key.1);
                let session = self.session.map(|s| s.0).ok_or("no session is open")?;
                return self.report_error(&session, key.0, key.1, format!("request {} step {}: {e}", key.0, key.1));
            }
        };
        let factor = self.opts.slowdown.at(key.1);
        if factor > 1.0 {
            std::thread::sleep(started.elapsed().mul_f64(factor - 1.0));
        }
        let compute_ms = started.elapsed().as_secs_f64() * 1e3;
        let send_started = Instant::now();
        let mut by_peer: BTreeMap<String, Vec<(String, Tensor)>> = BTreeMap::new();
        for (name, t) in outputs {
            if let Some(entry) = self.active.cache.iter().find(|c| c.present == name) {
                cache.insert(entry.past.clone(), t);
                continue;
            }
            for peer in self.active.peers_of.get(&name).into_iter().flatten() {
                by_peer.entry(peer.clone()).or_default().push((name.clone(), t.clone()));
            }
        }
        for (peer, tensors) in by_peer {
            self.send_to(&peer, &Frame::new("tensors", key.0, key.1, &device, tensors))?;
        }
        let timing = Tensor::f32(
            ArrayD::from_shape_vec(
                IxDyn(&[3]),
                vec![compute_ms as f32, waited_ms as f32, send_started.elapsed().as_secs_f32() * 1e3],
            )
            .unwrap_or_default(),
        );
        self.send_to("client", &Frame::new("done", key.0, key.1, &device, vec![("timing_ms".into(), timing)]))
    }

    /// Switch to the stage a `rebalance` message gives this device: cut it from the held
    /// units, check it against the routes, send away the KV cache of layers that leave,
    /// and wait for the cache of layers that arrive (then report `ready`).
    fn on_rebalance(&mut self, msg: &Frame) -> Result<(), String> {
        let started = Instant::now();
        let plan: Rebalance = match serde_json::from_str(&msg.info) {
            Ok(p) => p,
            Err(e) => {
                let error = format!("malformed rebalance message from `{}`: {e}", msg.sender);
                eprintln!("{}: {error}", self.name);
                return self.report_ready(&Ready { epoch: msg.step, error: Some(error), ..Default::default() });
            }
        };
        let mut ready = Ready { epoch: plan.epoch, ..Default::default() };
        match self.switch(&plan, &mut ready) {
            Ok(missing) => {
                ready.rebuild_ms = started.elapsed().as_secs_f64() * 1e3;
                self.handover = Some(Handover { ready, missing });
                self.check_handover()
            }
            Err(e) => {
                eprintln!("{}: cannot rebalance: {e}", self.name);
                ready.error = Some(e);
                self.report_ready(&ready)
            }
        }
    }

    fn switch(&mut self, plan: &Rebalance, ready: &mut Ready) -> Result<BTreeSet<(u64, String)>, String> {
        let held =
            self.held.as_ref().ok_or("the package was compiled without --standby: its boundaries cannot move")?;
        let me = plan.stages.iter().position(|d| *d == self.name).ok_or("the plan has no stage for this device")?;
        if plan.ranges.len() != plan.stages.len()
            || plan.ranges.first().is_none_or(|r| r[0] != 0)
            || plan.ranges.windows(2).any(|w| w[0][1] != w[1][0] || w[0][0] >= w[0][1])
        {
            return Err(format!("the plan's unit ranges {:?} do not tile the model", plan.ranges));
        }
        let range = plan.ranges[me];
        let owner = |u: usize| plan.ranges.iter().position(|r| (r[0]..r[1]).contains(&u)).map(|s| &plan.stages[s]);
        let active = if self.active.range == Some(range) {
            None
        } else {
            let graph = held.stage(range)?;
            let session = Session::with_weights(graph, self.weights.clone());
            let cache = cache_entries(session.graph());
            Some((session, cache))
        };
        // The new stage must take and give exactly what the routes say.
        let (inputs, outputs): (Vec<String>, Vec<String>) = {
            let g = active.as_ref().map_or(self.active.session.graph(), |(s, _)| s.graph());
            (
                g.inputs.iter().filter(|&&v| g.cache_of_input(v).is_none()).map(|&v| g.value(v).name.clone()).collect(),
                g.outputs
                    .iter()
                    .filter(|&&v| g.cache_of_output(v).is_none())
                    .map(|&v| g.value(v).name.clone())
                    .collect(),
            )
        };
        let routed_in: BTreeSet<&String> =
            plan.routes.iter().filter(|(_, r)| r.to.contains(&self.name)).map(|(t, _)| t).collect();
        let routed_out: BTreeSet<&String> =
            plan.routes.iter().filter(|(_, r)| r.from == self.name).map(|(t, _)| t).collect();
        if inputs.iter().collect::<BTreeSet<_>>() != routed_in || outputs.iter().collect::<BTreeSet<_>>() != routed_out
        {
            return Err(format!(
                "units {}..{} take {inputs:?} and give {outputs:?}, but the routes bring {routed_in:?} and take {routed_out:?}",
                range[0], range[1]
            ));
        }
        let peers_of =
            outputs.iter().map(|o| (o.clone(), plan.routes.get(o).map_or(Vec::new(), |r| r.to.clone()))).collect();
        if let Some((session, cache)) = active {
            self.active.session = session;
            self.active.cache = cache;
        }
        self.active.range = Some(range);
        self.active.needed = inputs;
        self.active.peers_of = peers_of;
        // KV cache: entries of layers that leave go to their new device.
        let keep: BTreeSet<String> = self.active.cache.iter().map(|c| c.past.clone()).collect();
        let mut outgoing: BTreeMap<(String, u64), Vec<(String, Tensor)>> = BTreeMap::new();
        self.caches.retain(|r, _| plan.requests.contains(r));
        for (&r, cache) in &mut self.caches {
            let leaving: Vec<String> = cache.keys().filter(|n| !keep.contains(*n)).cloned().collect();
            for name in leaving {
                let unit = *held.cache_unit.get(&name).ok_or_else(|| format!("no held unit reads `{name}`"))?;
                let to = owner(unit).ok_or_else(|| format!("no stage runs unit {unit}"))?.clone();
                let t = cache.remove(&name).unwrap_or_else(|| Tensor::f32(ArrayD::zeros(IxDyn(&[0]))));
                outgoing.entry((to, r)).or_default().push((name, t));
            }
        }
        for ((to, r), tensors) in outgoing {
            ready.kv_sent_bytes += tensors.iter().map(|(_, t)| t.byte_len() as u64).sum::<u64>();
            let device = self.name.clone();
            self.send_to(&to, &Frame::new("kv", r, plan.epoch, &device, tensors))?;
        }
        // Entries of layers that arrive (some may have come already).
        let mut missing = BTreeSet::new();
        for &r in &plan.requests {
            let have = self.caches.entry(r).or_default();
            for name in &keep {
                if !have.contains_key(name) {
                    missing.insert((r, name.clone()));
                }
            }
        }
        Ok(missing)
    }

    fn on_kv(&mut self, msg: Frame) -> Result<(), String> {
        let cache = self.caches.entry(msg.request).or_default();
        for (name, t) in msg.tensors {
            if let Some(h) = &mut self.handover {
                h.missing.remove(&(msg.request, name.clone()));
            }
            cache.insert(name, t);
        }
        self.check_handover()
    }

    fn check_handover(&mut self) -> Result<(), String> {
        if self.handover.as_ref().is_some_and(|h| h.missing.is_empty()) {
            if let Some(h) = self.handover.take() {
                return self.report_ready(&h.ready);
            }
        }
        Ok(())
    }

    fn report_ready(&mut self, ready: &Ready) -> Result<(), String> {
        let mut f = Frame::new("ready", 0, ready.epoch, &self.name.clone(), vec![]);
        f.info = serde_json::to_string(ready).map_err(|e| e.to_string())?;
        self.send_to("client", &f)
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
) -> Result<(), String> {
    shardc_passes::devices::check_name(device).map_err(|e| format!("--device: {e}"))?;
    let dir = out.join(device);
    let (manifest, graph) = package::load(&dir).map_err(|e| e.to_string())?;
    let held = package::load_standby(&dir, &manifest).map_err(|e| e.to_string())?;
    let range = held.as_ref().and_then(|h| {
        let first = h.standby.units.iter().position(|u| *u == manifest.units[0])?;
        let last = h.standby.units.iter().position(|u| *u == manifest.units[1])?;
        Some([h.standby.first + first, h.standby.first + last + 1])
    });
    if held.is_some() && range.is_none() {
        return Err(format!("{}: the stage's units are not among the units it holds", dir.display()));
    }
    let mut graphs = vec![&graph];
    graphs.extend(held.as_ref().map(|h| &h.graph));
    let weights = package::weights(&dir, &manifest, &graphs).map_err(|e| e.to_string())?;
    let session = Session::with_weights(graph, weights.clone());
    let net = Net::bind(device, cluster, ctx, opts)?;
    let initial = Initial {
        range,
        needed: manifest.inputs.iter().map(|p| p.name.clone()).collect(),
        peers_of: manifest.outputs.iter().map(|p| (p.name.clone(), p.peers.clone())).collect(),
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
        handover: None,
    };
    while !stop.load(Ordering::Relaxed) {
        let Some((env, msg)) = d.net.receive(Duration::from_millis(200))? else {
            // A client that went quiet (killed, say) does not keep the cache alive.
            if d.session.is_some_and(|(_, seen)| seen.elapsed() > opts.session_timeout) {
                d.end_session("its client went quiet");
            }
            continue;
        };
        if !d.on_message(env, msg)? {
            break;
        }
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

/// What `generate` reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Generation {
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
    /// Move stage boundaries when measured times call for it (packages compiled with
    /// `--standby`); `None`: never.
    pub balance: Option<BalanceOptions>,
}

/// The client's side of the cluster: sockets, and who takes the token ids.
struct Client<'a> {
    net: Net<'a>,
    /// This generation's session.
    session: SessionId,
    /// Each device's boot id when the session opened.
    boots: HashMap<String, u64>,
    ids_to: Vec<String>,
    /// The name of the token input (the transmission map's `generation`).
    token_input: String,
    /// Every device: the session is closed on all of them when the client is done.
    stages: Vec<String>,
    /// When the devices last heard from the client.
    last_sent: Instant,
}

impl Drop for Client<'_> {
    fn drop(&mut self) {
        let stages = std::mem::take(&mut self.stages);
        self.close(&stages);
    }
}

impl Client<'_> {
    fn send_to(&mut self, who: &str, f: &Frame) -> Result<(), String> {
        let session = self.session;
        self.last_sent = Instant::now();
        self.net.send(who, &session, f)
    }

    /// Tell every device the client is still there, if it has been quiet for a while.
    fn keep_alive(&mut self) -> Result<(), String> {
        if self.last_sent.elapsed() >= KEEPALIVE {
            for d in self.stages.clone() {
                self.send_to(&d, &Frame::new("alive", 0, 0, "client", vec![]))?;
            }
        }
        Ok(())
    }

    fn send_ids(&mut self, r: u64, step: u64, ids: &[i64]) -> Result<(), String> {
        let t = Tensor::i64(ArrayD::from_shape_vec(IxDyn(&[1, ids.len()]), ids.to_vec()).map_err(|e| e.to_string())?);
        for d in self.ids_to.clone() {
            let f = Frame::new("tensors", r, step, "client", vec![(self.token_input.clone(), t.clone())]);
            self.send_to(&d, &f)?;
        }
        Ok(())
    }

    /// Open the session on every device; each answers with its boot id.
    fn open(&mut self, devices: &[String], timeout: Duration) -> Result<(), String> {
        for d in devices {
            self.send_to(d, &Frame::new("open", 0, 0, "client", vec![]))?;
        }
        let mut waiting: BTreeSet<&String> = devices.iter().collect();
        let deadline = Instant::now() + timeout;
        while !waiting.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some((env, msg)) = self.net.receive(left)? else {
                return Err(format!(
                    "{} did not answer the session's opening within {:.1} s (not serving, or not sharing this secret?)",
                    waiting.iter().map(|d| format!("device `{d}`")).collect::<Vec<_>>().join(", "),
                    timeout.as_secs_f64()
                ));
            };
            if env.session != self.session {
                self.net.dropped.stale += 1;
                continue;
            }
            if msg.kind == "error" {
                return Err(format!("device `{}`: {}", msg.sender, msg.info));
            }
            if msg.kind == "opened" && waiting.remove(&msg.sender) {
                self.boots.insert(msg.sender.clone(), env.boot);
            }
        }
        Ok(())
    }

    /// The next message of this session, or `Ok(None)` on timeout. A device that
    /// reports an error, or whose boot id changed (it restarted and lost the session's
    /// KV cache), ends the generation with an error naming it.
    fn next(&mut self, timeout: Duration) -> Result<Option<Frame>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            self.keep_alive()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let Some((env, msg)) = self.net.receive(left.min(KEEPALIVE))? else { continue };
            if env.session != self.session {
                self.net.dropped.stale += 1;
                continue;
            }
            if let Some(&boot) = self.boots.get(&msg.sender) {
                if boot != env.boot {
                    return Err(format!(
                        "device `{}` restarted during generation: it lost this session's KV cache",
                        msg.sender
                    ));
                }
            }
            if msg.kind == "error" {
                return Err(format!("device `{}`: {}", msg.sender, msg.info));
            }
            return Ok(Some(msg));
        }
    }

    /// End the session on every device (best effort: the devices also end it when the
    /// client goes quiet).
    fn close(&mut self, devices: &[String]) {
        for d in devices {
            let _ = self.send_to(d, &Frame::new("close", 0, 0, "client", vec![]));
        }
    }

    /// Apply a new plan on drained devices: every device switches, moves KV cache and
    /// reports ready. Returns the KV-cache bytes moved.
    fn switch(
        &mut self,
        spec: &BalanceSpec,
        plan: &[shardc_passes::plan::Stage],
        epoch: u64,
        requests: Vec<u64>,
        timeout: Duration,
    ) -> Result<u64, String> {
        let routes = spec.routes(plan);
        let stages = spec.stage_devices(plan);
        let body = Rebalance {
            epoch,
            stages: stages.clone(),
            ranges: plan.iter().map(|s| [s.start, s.end]).collect(),
            requests,
            routes: routes.clone(),
        };
        let info = serde_json::to_string(&body).map_err(|e| e.to_string())?;
        for d in &stages {
            let mut f = Frame::new("rebalance", 0, epoch, "client", vec![]);
            f.info = info.clone();
            self.send_to(d, &f)?;
        }
        let mut waiting: BTreeSet<&String> = stages.iter().collect();
        let mut kv = 0;
        while !waiting.is_empty() {
            let Some(msg) = self.next(timeout)? else {
                return Err(format!(
                    "rebalancing: {} did not report ready within {:.1} s",
                    waiting.iter().map(|d| format!("`{d}`")).collect::<Vec<_>>().join(", "),
                    timeout.as_secs_f64()
                ));
            };
            if msg.kind != "ready" || msg.step != epoch {
                eprintln!("client: ignored a `{}` message from `{}` while rebalancing", msg.kind, msg.sender);
                continue;
            }
            let ready: Ready = serde_json::from_str(&msg.info).map_err(|e| format!("bad ready message: {e}"))?;
            if let Some(e) = ready.error {
                return Err(format!("rebalancing: device `{}`: {e}", msg.sender));
            }
            kv += ready.kv_sent_bytes;
            waiting.remove(&msg.sender);
        }
        self.ids_to = routes.get(&self.token_input).map_or(Vec::new(), |r| r.to.clone());
        Ok(kv)
    }
}

/// Drive `job.requests` greedy generations of `job.tokens` tokens through the devices.
pub fn generate(
    out: &Path,
    cluster: &Cluster,
    ctx: &zmq::Context,
    opts: &NetOptions,
    job: &Job,
) -> Result<Generation, String> {
    let (n, requests, timeout) = (job.tokens, job.requests, job.timeout);
    if requests == 0 || requests > MAX_REQUESTS {
        return Err(format!("{requests} requests: between 1 and {MAX_REQUESTS} run at once"));
    }
    let output = package::load_output(out, true).map_err(|e| e.to_string())?;
    let map = &output.map;
    let stages = map.stages.clone();
    let gen = map.generation.as_ref().ok_or(
        "these packages are not a language model a client can drive: the transmission map names no token input and logits",
    )?;
    let (token_input, logits_name) = (gen.token_input.clone(), gen.logits.clone());
    // Past this context the cache is recomputed from every token (Phi-3's longrope).
    let recompute_beyond = gen.recompute_beyond;
    // Without a KV cache every step runs on all the tokens so far.
    let cached = gen.kv_cache;
    crate::generate::check_context(gen.max_context, job.prompt.len(), n).map_err(|e| e.to_string())?;
    let ids_to: Vec<String> = map
        .transfers
        .iter()
        .filter(|t| t.tensor == token_input && t.from == "client")
        .flat_map(|t| t.to.clone())
        .collect();
    let manifests = &output.manifests;
    let mut balancer = match job.balance {
        Some(o) => output.balance.clone().map(|spec| Balancer::new(spec, o)),
        None => None,
    };
    for d in &stages {
        if cluster.address(d).is_none() {
            return Err(format!("device `{d}` of the transmission map is not in the cluster file"));
        }
    }
    let net = Net::bind("client", cluster, ctx, opts)?;
    let mut client = Client {
        net,
        session: crate::wire::random()?,
        boots: HashMap::new(),
        ids_to,
        token_input,
        stages: stages.clone(),
        last_sent: Instant::now(),
    };
    let started = Instant::now();
    client.open(&stages, timeout)?;
    let mut tokens: Vec<Vec<i64>> = vec![Vec::new(); requests];
    let mut token_ms: Vec<Vec<f64>> = vec![Vec::new(); requests];
    let mut timings: Vec<StageTiming> =
        manifests.iter().map(|m| StageTiming { device: m.device.clone(), ..Default::default() }).collect();
    // Per (request, step): which stages reported done, and the logits when they come.
    let mut done: HashMap<(u64, u64), Vec<bool>> = HashMap::new();
    let mut logits: HashMap<(u64, u64), Vec<f32>> = HashMap::new();
    for r in 0..requests as u64 {
        client.send_ids(r, 0, &job.prompt)?;
        done.insert((r, 0), vec![false; stages.len()]);
    }
    // Each request travels under a wire id; a request whose cache is recomputed starts
    // over under a new one, its old cache ended on every device.
    let mut feeder = Feeder {
        cached,
        recompute_beyond,
        prompt: &job.prompt,
        owner: (0..requests).map(|r| (r as u64, r)).collect(),
        next_wire: requests as u64,
        fed: vec![job.prompt.len(); requests],
        ids_sent: vec![job.prompt.len()],
    };
    let mut active = requests;
    let mut completed_steps = 0u64;
    // A move waiting for the in-flight steps to finish: the plan, since when, and the
    // next step of each request, held back.
    let mut draining: Option<(Vec<shardc_passes::plan::Stage>, Instant)> = None;
    let mut held_back: Vec<(u64, u64)> = Vec::new();
    let mut epoch = 0;
    while active > 0 && n > 0 {
        let Some(msg) = client.next(timeout)? else {
            // Name the first stage that has not finished the oldest outstanding step.
            let (key, flags) = done.iter().min_by_key(|(k, _)| **k).ok_or("timed out")?;
            let missing = flags.iter().position(|f| !f).map_or("?".to_string(), |i| stages[i].clone());
            return Err(format!(
                "device `{missing}` did not finish request {} step {} within {:.1} s",
                key.0,
                key.1,
                timeout.as_secs_f64()
            ));
        };
        let key = (msg.request, msg.step);
        match msg.kind.as_str() {
            "done" => {
                if let Some(i) = stages.iter().position(|s| *s == msg.sender) {
                    if let Some(flags) = done.get_mut(&key) {
                        flags[i] = true;
                    }
                    if let Some((_, t)) = msg.tensors.first() {
                        let v: Vec<f64> = t.to_f32_vec().into_iter().map(f64::from).collect();
                        let (c, w, s) =
                            (*v.first().unwrap_or(&0.0), *v.get(1).unwrap_or(&0.0), *v.get(2).unwrap_or(&0.0));
                        let st = &mut timings[i];
                        st.steps += 1;
                        st.compute_ms += c;
                        st.waiting_ms += w;
                        st.send_ms += s;
                        st.per_step.push((key.0, key.1, c, w, s));
                        if key.1 > 0 {
                            if let Some(b) = &mut balancer {
                                b.record(i, c);
                            }
                        }
                    }
                }
            }
            "tensors" => {
                if let Some((_, t)) = msg.tensors.iter().find(|(n, _)| *n == logits_name) {
                    let values = t.to_f32_vec();
                    let vocab = *t.shape().last().unwrap_or(&1);
                    logits.insert(key, values[values.len().saturating_sub(vocab)..].to_vec());
                }
            }
            _ => {}
        }
        // A step is complete when every stage is done and the logits arrived.
        let complete = done.get(&key).is_some_and(|f| f.iter().all(|x| *x)) && logits.contains_key(&key);
        if complete {
            done.remove(&key);
            let next = argmax(&logits.remove(&key).unwrap_or_default()) as i64;
            let r = feeder.request(key.0)?;
            tokens[r].push(next);
            token_ms[r].push(started.elapsed().as_secs_f64() * 1e3);
            if key.1 > 0 {
                completed_steps += 1;
            }
            if tokens[r].len() == n {
                active -= 1;
                for d in &stages {
                    client.send_to(d, &Frame::new("end", key.0, key.1, "client", vec![]))?;
                }
            } else if draining.is_some() {
                held_back.push((key.0, key.1 + 1));
            } else {
                let sent = feeder.advance(&mut client, &stages, key, r, &tokens[r])?;
                done.insert(sent, vec![false; stages.len()]);
            }
            if let (Some(b), None) = (&mut balancer, &draining) {
                let before = b.decisions.len();
                match b.evaluate(completed_steps, active) {
                    // Logged once applied, with what the move took.
                    Some(plan) => draining = Some((plan, Instant::now())),
                    None if b.decisions.len() > before => {
                        eprintln!("client: {}", b.decisions[before].to_text());
                    }
                    None => {}
                }
            }
        }
        // Drained: switch, then release the held-back steps.
        if done.is_empty() {
            if let Some((plan, since)) = draining.take() {
                let b = balancer.as_mut().ok_or("draining without a balancer")?;
                let drain_ms = since.elapsed().as_secs_f64() * 1e3;
                if !held_back.is_empty() {
                    epoch += 1;
                    let switch_started = Instant::now();
                    let requests: Vec<u64> = held_back.iter().map(|h| h.0).collect();
                    let kv = client.switch(&b.spec, &plan, epoch, requests, timeout)?;
                    b.applied(plan, drain_ms, switch_started.elapsed().as_secs_f64() * 1e3, kv);
                    if let Some(d) = b.decisions.last() {
                        eprintln!("client: {}", d.to_text());
                    }
                }
                for (wire, step) in std::mem::take(&mut held_back) {
                    let r = feeder.request(wire)?;
                    let sent = feeder.advance(&mut client, &stages, (wire, step - 1), r, &tokens[r])?;
                    done.insert(sent, vec![false; stages.len()]);
                }
            }
        }
    }
    let balance = balancer.map(|b| BalanceReport {
        options: b.opts,
        moves: b.decisions.iter().filter(|d| d.moved).count(),
        plan: b.spec.view(&b.plan),
        decisions: b.decisions,
    });
    Ok(Generation {
        tokens,
        token_ms,
        ids_sent: feeder.ids_sent,
        stages: timings,
        wall_ms: started.elapsed().as_secs_f64() * 1e3,
        balance,
        dropped: client.net.dropped.clone(),
    })
}

/// What the client feeds each request's steps: which wire id carries it and how many
/// tokens its devices have seen.
struct Feeder<'a> {
    /// Whether the packages keep a KV cache.
    cached: bool,
    /// The context past which the cache is recomputed (`Graph::recompute_beyond`).
    recompute_beyond: Option<u64>,
    prompt: &'a [i64],
    /// Request index of each wire id in flight.
    owner: HashMap<u64, usize>,
    next_wire: u64,
    /// Tokens each request's devices have been sent.
    fed: Vec<usize>,
    /// Tokens sent per step of request 0.
    ids_sent: Vec<usize>,
}

impl Feeder<'_> {
    /// The request a wire id carries.
    fn request(&self, wire: u64) -> Result<usize, String> {
        self.owner.get(&wire).copied().ok_or_else(|| format!("unknown request {wire}"))
    }

    /// Send request `r`'s next step after step `key` produced `generated`'s last
    /// token: with a KV cache the one new token, or — when it first takes the context
    /// past `recompute_beyond` — every token under a new wire id, the old one's cache
    /// ended on every device; without a cache every token, as the next step of the
    /// same wire id. Returns the wire id and step sent.
    fn advance(
        &mut self,
        client: &mut Client,
        stages: &[String],
        key: (u64, u64),
        r: usize,
        generated: &[i64],
    ) -> Result<(u64, u64), String> {
        let past = self.fed[r];
        let all = || -> Vec<i64> { self.prompt.iter().chain(generated).copied().collect() };
        let recompute = crate::generate::recomputes(self.recompute_beyond, past, 1);
        let (wire, step, ids, fed) = if !self.cached {
            let ids = all();
            let n = ids.len();
            (key.0, key.1 + 1, ids, n)
        } else if recompute {
            for d in stages {
                client.send_to(d, &Frame::new("end", key.0, key.1, "client", vec![]))?;
            }
            self.owner.remove(&key.0);
            let wire = self.next_wire;
            self.next_wire += 1;
            self.owner.insert(wire, r);
            let ids = all();
            let n = ids.len();
            (wire, 0, ids, n)
        } else {
            let next = *generated.last().ok_or("a step with no token to feed")?;
            (key.0, key.1 + 1, vec![next], past + 1)
        };
        client.send_ids(wire, step, &ids)?;
        self.fed[r] = fed;
        if r == 0 {
            self.ids_sent.push(ids.len());
        }
        Ok((wire, step))
    }
}
