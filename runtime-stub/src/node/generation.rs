//! Generation: the client's side of a run as an explicit state machine ([`Run`]).
//!
//! Each request is in
//! [`RequestState::Prefill`] (its prompt sent), then [`RequestState::Decode`] (one
//! step per token), then [`RequestState::Done`]; a step completes when every stage
//! reported `done` and the logits arrived. The whole run is [`Phase::Serving`] until
//! the balancer decides to move: then [`Phase::Draining`] (steps in flight finish,
//! each request's next step is held back), then a rebalance (every device switches
//! and reports `ready`), then serving again with the held-back steps released. It
//! ends when every request is done.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::balance::Balancer;
use crate::frame::{Body, Frame, Timing};
use crate::generate::argmax;
use crate::package;
use shardc_format::Cluster;
use shardc_passes::plan::Stage;

use super::client::Client;
use super::feeder::Feeder;
use super::net::Net;
use super::*;

/// Where one request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RequestState {
    /// Its prompt is on its way through the stages.
    Prefill,
    /// Generating: `tokens` known so far.
    Decode { tokens: usize },
    /// Every token generated; its KV cache freed on every device.
    Done,
}

/// Where the whole run is.
enum Phase {
    /// Steps flow as they complete.
    Serving,
    /// The balancer chose `plan`: the steps in flight finish, and each request's next
    /// step (wire id, step) waits in `held_back` until every device has switched.
    Draining { plan: Vec<Stage>, since: Instant, held_back: Vec<(u64, u64)> },
}

/// One step in flight (wire id, step): which stages are done with it, and its logits
/// once they arrive.
struct InFlight {
    done: Vec<bool>,
    logits: Option<Vec<f32>>,
}

impl InFlight {
    fn new(stages: usize) -> InFlight {
        InFlight { done: vec![false; stages], logits: None }
    }

    fn complete(&self) -> bool {
        self.logits.is_some() && self.done.iter().all(|d| *d)
    }
}

/// A generation in progress.
struct Run<'a> {
    client: Client<'a>,
    feeder: Feeder<'a>,
    stages: Vec<String>,
    logits_name: String,
    /// New tokens per request.
    tokens_wanted: usize,
    timeout: Duration,
    state: Vec<RequestState>,
    tokens: Vec<Vec<i64>>,
    token_ms: Vec<Vec<f64>>,
    timings: Vec<StageTiming>,
    in_flight: HashMap<(u64, u64), InFlight>,
    balancer: Option<Balancer>,
    phase: Phase,
    /// Plans moved to so far.
    epoch: u64,
    /// Decode steps completed, all requests.
    completed_steps: u64,
    started: Instant,
}

impl Run<'_> {
    fn active(&self) -> usize {
        self.state.iter().filter(|s| **s != RequestState::Done).count()
    }

    /// Send a step's token ids and wait for it.
    fn send(&mut self, (wire, step): (u64, u64), ids: &[i64]) -> Result<(), NetError> {
        self.client.send_ids(wire, step, ids)?;
        self.in_flight.insert((wire, step), InFlight::new(self.stages.len()));
        Ok(())
    }

    /// Feed request `r` its next step after `key`.
    fn advance(&mut self, key: (u64, u64), r: usize) -> Result<(), NetError> {
        let sent = self.feeder.advance(&mut self.client, &self.stages, key, r, &self.tokens[r])?;
        self.in_flight.insert(sent, InFlight::new(self.stages.len()));
        Ok(())
    }

    /// The error when nothing arrived within the timeout: the first stage that has not
    /// finished the oldest step in flight.
    fn timed_out(&self) -> NetError {
        let Some((key, step)) = self.in_flight.iter().min_by_key(|(k, _)| **k) else {
            return "timed out with no step in flight".into();
        };
        let missing = step.done.iter().position(|f| !f).map_or("?".to_string(), |i| self.stages[i].clone());
        format!(
            "device `{missing}` did not finish request {} step {} within {:.1} s",
            key.0,
            key.1,
            self.timeout.as_secs_f64()
        )
        .into()
    }

    fn on_message(&mut self, msg: Frame) -> Result<(), NetError> {
        let key = (msg.request, msg.step);
        match msg.body {
            Body::Done(timing) => self.on_done(key, &msg.sender, timing),
            Body::Tensors(tensors) => {
                if let (Some((_, t)), Some(step)) =
                    (tensors.iter().find(|(n, _)| *n == self.logits_name), self.in_flight.get_mut(&key))
                {
                    let vocab = *t.shape().last().unwrap_or(&1);
                    // The last position's row, read in place when the values lie in order
                    // (a prompt step's logits hold every position: tens of MB).
                    let last = |v: &[f32]| v[v.len().saturating_sub(vocab)..].to_vec();
                    step.logits = Some(match t.as_f32().and_then(|a| a.as_slice()) {
                        Some(values) => last(values),
                        None => last(&t.to_f32_vec()),
                    });
                }
            }
            // A device's answer to an opening the client re-sent while it was starting
            // (loading its weights): expected, nothing to do.
            Body::Opened => {}
            other => eprintln!("client: ignored a `{}` message from `{}`", other.kind(), msg.sender),
        }
        if self.in_flight.get(&key).is_some_and(InFlight::complete) {
            self.complete(key)?;
        }
        if self.in_flight.is_empty() {
            self.drained()?;
        }
        Ok(())
    }

    fn on_done(&mut self, key: (u64, u64), sender: &str, timing: Timing) {
        let Some(i) = self.stages.iter().position(|s| s == sender) else { return };
        if let Some(step) = self.in_flight.get_mut(&key) {
            step.done[i] = true;
        }
        let st = &mut self.timings[i];
        st.steps += 1;
        st.compute_ms += timing.compute_ms;
        st.waiting_ms += timing.waiting_ms;
        st.send_ms += timing.send_ms;
        st.per_step.push((key.0, key.1, timing.compute_ms, timing.waiting_ms, timing.send_ms));
        if let (true, Some(b)) = (key.1 > 0, &mut self.balancer) {
            b.record(i, timing.compute_ms);
        }
    }

    /// A step completed: its token is known; the request moves on (or is done), and
    /// the balancer looks at the times.
    fn complete(&mut self, key: (u64, u64)) -> Result<(), NetError> {
        let step = self.in_flight.remove(&key).ok_or("completed a step not in flight")?;
        let next = argmax(&step.logits.ok_or("a step completed without its logits")?) as i64;
        let r = self.feeder.request(key.0)?;
        self.tokens[r].push(next);
        self.token_ms[r].push(self.started.elapsed().as_secs_f64() * 1e3);
        if key.1 > 0 {
            self.completed_steps += 1;
        }
        self.state[r] = if self.tokens[r].len() == self.tokens_wanted {
            RequestState::Done
        } else {
            RequestState::Decode { tokens: self.tokens[r].len() }
        };
        match (self.state[r], &mut self.phase) {
            (RequestState::Done, _) => {
                for d in self.stages.clone() {
                    self.client.send_to(&d, &Frame::new(key.0, key.1, "client", Body::End))?;
                }
            }
            (_, Phase::Draining { held_back, .. }) => held_back.push((key.0, key.1 + 1)),
            (_, Phase::Serving) => self.advance(key, r)?,
        }
        let active = self.active();
        if let (Some(b), Phase::Serving) = (&mut self.balancer, &self.phase) {
            let before = b.decisions.len();
            match b.evaluate(self.completed_steps, active) {
                // Logged once applied, with what the move took.
                Some(plan) => self.phase = Phase::Draining { plan, since: Instant::now(), held_back: Vec::new() },
                None if b.decisions.len() > before => eprintln!("client: {}", b.decisions[before].to_text()),
                None => {}
            }
        }
        Ok(())
    }

    /// Nothing in flight: when draining, rebalance and release the held-back steps.
    fn drained(&mut self) -> Result<(), NetError> {
        let Phase::Draining { plan, since, held_back } = std::mem::replace(&mut self.phase, Phase::Serving) else {
            return Ok(());
        };
        let drain_ms = since.elapsed().as_secs_f64() * 1e3;
        if !held_back.is_empty() {
            self.epoch += 1;
            let switch_started = Instant::now();
            let requests: Vec<u64> = held_back.iter().map(|h| h.0).collect();
            let b = self.balancer.as_mut().ok_or("draining without a balancer")?;
            let kv = self.client.switch(&b.spec, &plan, self.epoch, requests, self.timeout)?;
            b.applied(plan, drain_ms, switch_started.elapsed().as_secs_f64() * 1e3, kv);
            if let Some(d) = b.decisions.last() {
                eprintln!("client: {}", d.to_text());
            }
        }
        for (wire, step) in held_back {
            let r = self.feeder.request(wire)?;
            self.advance((wire, step - 1), r)?;
        }
        Ok(())
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
    let requests = job.requests;
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
    crate::generate::check_context(gen.max_context, job.prompt.len(), job.tokens)?;
    let ids_to: Vec<String> = map
        .transfers
        .iter()
        .filter(|t| t.tensor == gen.token_input && t.from == shardc_format::Endpoint::Client)
        .flat_map(|t| t.to.iter().map(|e| e.name().to_string()))
        .collect();
    for d in &stages {
        if cluster.address(d).is_none() {
            return Err(format!("device `{d}` of the transmission map is not in the cluster file").into());
        }
    }
    let net = Net::bind("client", cluster, ctx, opts)?;
    let client = Client::new(net, stages.clone(), ids_to, gen.token_input.clone())?;
    // Each request travels under a wire id; a request whose cache is recomputed starts
    // over under a new one, its old cache ended on every device.
    let feeder = Feeder {
        // Without a KV cache every step runs on all the tokens so far.
        cached: gen.kv_cache,
        // Past this context the cache is recomputed from every token (Phi-3's longrope).
        recompute_beyond: gen.recompute_beyond,
        prompt: &job.prompt,
        owner: (0..requests).map(|r| (r as u64, r)).collect(),
        next_wire: requests as u64,
        fed: vec![job.prompt.len(); requests],
        ids_sent: vec![job.prompt.len()],
    };
    let mut run = Run {
        client,
        feeder,
        logits_name: gen.logits.clone(),
        tokens_wanted: job.tokens,
        timeout: job.timeout,
        state: vec![RequestState::Prefill; requests],
        tokens: vec![Vec::new(); requests],
        token_ms: vec![Vec::new(); requests],
        timings: output
            .manifests
            .iter()
            .map(|m| StageTiming { device: m.device.clone(), units: m.units.clone(), ..Default::default() })
            .collect(),
        in_flight: HashMap::new(),
        balancer: job.balance.and_then(|o| output.balance.clone().map(|spec| Balancer::new(spec, o))),
        phase: Phase::Serving,
        epoch: 0,
        completed_steps: 0,
        started: Instant::now(),
        stages,
    };
    run.client.open(&run.stages, job.start_timeout)?;
    if job.tokens > 0 {
        for r in 0..requests as u64 {
            run.send((r, 0), &job.prompt)?;
        }
    }
    while job.tokens > 0 && run.active() > 0 {
        let msg = run.client.next(run.timeout)?.ok_or_else(|| run.timed_out())?;
        run.on_message(msg)?;
    }
    let balance = run.balancer.map(|b| BalanceReport {
        options: b.opts,
        moves: b.decisions.iter().filter(|d| d.moved).count(),
        plan: b.spec.view(&b.plan),
        decisions: b.decisions,
    });
    Ok(Generation {
        prompt_tokens: job.prompt.len(),
        new_tokens: job.tokens,
        tokens: run.tokens,
        token_ms: run.token_ms,
        ids_sent: run.feeder.ids_sent,
        stages: run.timings,
        wall_ms: run.started.elapsed().as_secs_f64() * 1e3,
        balance,
        dropped: run.client.dropped().clone(),
    })
}
