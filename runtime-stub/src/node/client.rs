//! The client: opens a session on every device, feeds token ids, collects logits and
//! timings, drives load balancing, and closes the session.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use ndarray::{ArrayD, IxDyn};

use crate::balance::{BalanceSpec, Balancer};
use crate::frame::{Frame, Kind};
use crate::generate::argmax;
use crate::package::{self};
use crate::wire::SessionId;
use crate::Tensor;
use shardc_format::Cluster;

use super::feeder::Feeder;
use super::net::Net;
use super::*;

/// The client's side of the cluster: sockets, and who takes the token ids.
pub(super) struct Client<'a> {
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
    pub(super) fn send_to(&mut self, who: &str, f: &Frame) -> Result<(), NetError> {
        let session = self.session;
        self.last_sent = Instant::now();
        self.net.send(who, &session, f)
    }

    /// Tell every device the client is still there, if it has been quiet for a while.
    fn keep_alive(&mut self) -> Result<(), NetError> {
        if self.last_sent.elapsed() >= KEEPALIVE {
            for d in self.stages.clone() {
                self.send_to(&d, &Frame::new(Kind::Alive, 0, 0, "client", vec![]))?;
            }
        }
        Ok(())
    }

    pub(super) fn send_ids(&mut self, r: u64, step: u64, ids: &[i64]) -> Result<(), NetError> {
        let t = Tensor::i64(ArrayD::from_shape_vec(IxDyn(&[1, ids.len()]), ids.to_vec()).map_err(|e| e.to_string())?);
        for d in self.ids_to.clone() {
            let f = Frame::new(Kind::Tensors, r, step, "client", vec![(self.token_input.clone(), t.clone())]);
            self.send_to(&d, &f)?;
        }
        Ok(())
    }

    /// Open the session on every device; each answers with its boot id.
    fn open(&mut self, devices: &[String], timeout: Duration) -> Result<(), NetError> {
        for d in devices {
            self.send_to(d, &Frame::new(Kind::Open, 0, 0, "client", vec![]))?;
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
                )
                .into());
            };
            if env.session != self.session {
                self.net.dropped.stale += 1;
                continue;
            }
            if msg.kind == Kind::Error {
                return Err(NetError::Device { device: msg.sender.clone(), message: msg.info.clone() });
            }
            if msg.kind == Kind::Opened && waiting.remove(&msg.sender) {
                self.boots.insert(msg.sender.clone(), env.boot);
            }
        }
        Ok(())
    }

    /// The next message of this session, or `Ok(None)` on timeout. A device that
    /// reports an error, or whose boot id changed (it restarted and lost the session's
    /// KV cache), ends the generation with an error naming it.
    fn next(&mut self, timeout: Duration) -> Result<Option<Frame>, NetError> {
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
                    return Err(NetError::Restarted { device: msg.sender.clone() });
                }
            }
            if msg.kind == Kind::Error {
                return Err(NetError::Device { device: msg.sender.clone(), message: msg.info.clone() });
            }
            return Ok(Some(msg));
        }
    }

    /// End the session on every device (best effort: the devices also end it when the
    /// client goes quiet).
    fn close(&mut self, devices: &[String]) {
        for d in devices {
            let _ = self.send_to(d, &Frame::new(Kind::Close, 0, 0, "client", vec![]));
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
    ) -> Result<u64, NetError> {
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
            let mut f = Frame::new(Kind::Rebalance, 0, epoch, "client", vec![]);
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
                )
                .into());
            };
            if msg.kind != Kind::Ready || msg.step != epoch {
                eprintln!("client: ignored a `{}` message from `{}` while rebalancing", msg.kind, msg.sender);
                continue;
            }
            let ready: Ready = serde_json::from_str(&msg.info).map_err(|e| format!("bad ready message: {e}"))?;
            if let Some(e) = ready.error {
                return Err(NetError::Device {
                    device: msg.sender.clone(),
                    message: format!("while rebalancing: {e}"),
                });
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
) -> Result<Generation, NetError> {
    let (n, requests, timeout) = (job.tokens, job.requests, job.timeout);
    if requests == 0 || requests > MAX_REQUESTS {
        return Err(format!("{requests} requests: between 1 and {MAX_REQUESTS} run at once").into());
    }
    // The map and manifests only: each device checks its own package's files.
    let output = package::load_output(out, false)?;
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
    crate::generate::check_context(gen.max_context, job.prompt.len(), n)?;
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
            return Err(format!("device `{d}` of the transmission map is not in the cluster file").into());
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
    client.open(&stages, job.start_timeout)?;
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
            )
            .into());
        };
        let key = (msg.request, msg.step);
        match msg.kind {
            Kind::Done => {
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
            Kind::Tensors => {
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
                    client.send_to(d, &Frame::new(Kind::End, key.0, key.1, "client", vec![]))?;
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
