//! The client's side of the wire: opens a session on every device, sends token ids,
//! receives this session's messages (naming a device that errs or restarted), moves
//! every device to a new plan, and closes the session. [`super::generation`] drives it.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use ndarray::{ArrayD, IxDyn};

use crate::balance::BalanceSpec;
use crate::frame::{Body, Frame};
use crate::wire::SessionId;
use crate::Tensor;
use shardc_passes::plan::Stage;

use super::net::Net;
use super::*;

/// How often a client repeats a session's `open` to devices that have not answered.
const OPEN_RETRY: Duration = Duration::from_millis(500);

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

impl<'a> Client<'a> {
    /// A client on `net` for a new session (random id) with `stages`; the token ids go
    /// to `ids_to` as the input `token_input`.
    pub(super) fn new(
        net: Net<'a>,
        stages: Vec<String>,
        ids_to: Vec<String>,
        token_input: String,
    ) -> Result<Client<'a>, NetError> {
        Ok(Client {
            net,
            session: crate::wire::random()?,
            boots: HashMap::new(),
            ids_to,
            token_input,
            stages,
            last_sent: Instant::now(),
        })
    }

    /// Messages dropped so far (refused, replayed, of other sessions).
    pub(super) fn dropped(&self) -> &crate::wire::Dropped {
        &self.net.dropped
    }

    pub(super) fn send_to(&mut self, who: &str, f: &Frame) -> Result<(), NetError> {
        let session = self.session;
        self.last_sent = Instant::now();
        self.net.send(who, &session, f)
    }

    /// Tell every device the client is still there, if it has been quiet for a while.
    fn keep_alive(&mut self) -> Result<(), NetError> {
        if self.last_sent.elapsed() >= KEEPALIVE {
            for d in self.stages.clone() {
                self.send_to(&d, &Frame::control("client", Body::Alive))?;
            }
        }
        Ok(())
    }

    pub(super) fn send_ids(&mut self, r: u64, step: u64, ids: &[i64]) -> Result<(), NetError> {
        let t = Tensor::i64(ArrayD::from_shape_vec(IxDyn(&[1, ids.len()]), ids.to_vec()).map_err(|e| e.to_string())?);
        for d in self.ids_to.clone() {
            let f = Frame::new(r, step, "client", Body::Tensors(vec![(self.token_input.clone(), t.clone())]));
            self.send_to(&d, &f)?;
        }
        Ok(())
    }

    /// Open the session on every device; each answers with its boot id. Asked again
    /// every [`OPEN_RETRY`] until answered: a message sent while a peer's connection is
    /// being replaced (a previous client at the same address just died) can be lost,
    /// and a device answers a repeated `open` of its session again.
    pub(super) fn open(&mut self, devices: &[String], timeout: Duration) -> Result<(), NetError> {
        let mut waiting: BTreeSet<&String> = devices.iter().collect();
        let deadline = Instant::now() + timeout;
        let mut asked = None::<Instant>;
        while !waiting.is_empty() {
            if asked.is_none_or(|t| t.elapsed() >= OPEN_RETRY) {
                for d in waiting.clone() {
                    self.send_to(d, &Frame::control("client", Body::Open))?;
                }
                asked = Some(Instant::now());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "{} did not answer the session's opening within {:.1} s (not serving, or not sharing this secret?)",
                    waiting.iter().map(|d| format!("device `{d}`")).collect::<Vec<_>>().join(", "),
                    timeout.as_secs_f64()
                )
                .into());
            }
            let Some((env, msg)) = self.net.receive(left.min(OPEN_RETRY))? else { continue };
            if env.session != self.session {
                self.net.dropped.stale += 1;
                continue;
            }
            if let Body::Error(message) = msg.body {
                return Err(NetError::Device { device: msg.sender, message });
            }
            if msg.body == Body::Opened && waiting.remove(&msg.sender) {
                self.boots.insert(msg.sender.clone(), env.boot);
            }
        }
        Ok(())
    }

    /// The next message of this session, or `Ok(None)` on timeout. A device that
    /// reports an error, or whose boot id changed (it restarted and lost the session's
    /// KV cache), ends the generation with an error naming it.
    pub(super) fn next(&mut self, timeout: Duration) -> Result<Option<Frame>, NetError> {
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
            match msg.body {
                Body::Error(message) => return Err(NetError::Device { device: msg.sender, message }),
                Body::Unreadable { why, .. } => return Err(NetError::Device { device: msg.sender, message: why }),
                _ => return Ok(Some(msg)),
            }
        }
    }

    /// End the session on every device (best effort: the devices also end it when the
    /// client goes quiet).
    pub(super) fn close(&mut self, devices: &[String]) {
        for d in devices {
            let _ = self.send_to(d, &Frame::control("client", Body::Close));
        }
    }

    /// Apply a new plan on drained devices: every device switches, moves KV cache and
    /// reports ready. Returns the KV-cache bytes moved.
    pub(super) fn switch(
        &mut self,
        spec: &BalanceSpec,
        plan: &[Stage],
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
        for d in &stages {
            self.send_to(d, &Frame::control("client", Body::Rebalance(body.clone())))?;
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
            let ready = match msg.body {
                // A device that could not switch says so whatever it understood.
                Body::Ready(ready) if ready.epoch == epoch || ready.error.is_some() => ready,
                _ => {
                    eprintln!("client: ignored a `{}` message from `{}` while rebalancing", msg.kind(), msg.sender);
                    continue;
                }
            };
            if let Some(e) = ready.error {
                return Err(NetError::Device {
                    device: msg.sender.clone(),
                    message: format!("while rebalancing: {e}"),
                });
            }
            kv += ready.kv_sent_bytes;
            waiting.remove(&msg.sender);
        }
        self.ids_to =
            routes.get(&self.token_input).map_or(Vec::new(), |r| r.to.iter().map(|e| e.name().to_string()).collect());
        Ok(kv)
    }
}
