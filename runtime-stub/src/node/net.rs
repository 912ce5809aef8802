//! One participant's end of the network: the bound socket, connections to the
//! others, sealing and opening messages, replay and sender checks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::frame::{self, Frame};
use crate::wire::{Dropped, Envelope, ReplayGuard, SessionId, Wire};
use shardc_format::Cluster;

use super::*;

/// One participant's end of the network: its bound socket, connections to the others,
/// the envelope, the replay guard and what was dropped.
pub(super) struct Net<'a> {
    pub(super) me: String,
    pub(super) cluster: &'a Cluster,
    pub(super) ctx: &'a zmq::Context,
    pub(super) socket: zmq::Socket,
    pub(super) peers: HashMap<String, zmq::Socket>,
    pub(super) wire: Wire,
    pub(super) guard: ReplayGuard,
    pub(super) dropped: Dropped,
    pub(super) max_frame: usize,
}

impl<'a> Net<'a> {
    /// Bind `me`'s address from the cluster file.
    pub(super) fn bind(
        me: &str,
        cluster: &'a Cluster,
        ctx: &'a zmq::Context,
        opts: &NetOptions,
    ) -> Result<Net<'a>, NetError> {
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
    pub(super) fn send(&mut self, who: &str, session: &SessionId, frame: &Frame) -> Result<(), NetError> {
        let address = self.cluster.address(who).ok_or_else(|| format!("`{who}` is not in the cluster file"))?;
        if !self.peers.contains_key(who) {
            let s = self.ctx.socket(zmq::PUSH).map_err(|e| e.to_string())?;
            s.set_linger(1000).map_err(|e| e.to_string())?;
            s.connect(address).map_err(|e| format!("cannot connect to `{who}` at {address}: {e}"))?;
            self.peers.insert(who.to_string(), s);
        }
        let bytes = frame::encode(frame).map_err(|e| NetError::Other(e.to_string()))?;
        let parts = self.wire.seal(session, bytes)?;
        self.peers[who]
            .send_multipart(parts, 0)
            .map_err(|e| NetError::Other(format!("cannot send to `{who}` at {address}: {e}")))
    }

    /// Receive one message, or `Ok(None)` on timeout. What is malformed, fails
    /// authentication, comes from no participant or repeats a message is dropped and
    /// counted.
    pub(super) fn receive(&mut self, timeout: Duration) -> Result<Option<(Envelope, Frame)>, NetError> {
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
            if self.cluster.address(&frame.sender).is_none() {
                self.dropped.refused += 1;
                let why = format!("dropped a `{}` message from `{}`: not a participant", frame.kind(), frame.sender);
                self.log(&why, self.dropped.refused);
                continue;
            }
            if !self.guard.accept(&frame.sender, &env) {
                self.dropped.replayed += 1;
                let why = format!("dropped a replayed `{}` message from `{}`", frame.kind(), frame.sender);
                self.log(&why, self.dropped.replayed);
                continue;
            }
            return Ok(Some((env, frame)));
        }
    }

    /// Log the first 16 drops of a kind, then the 32nd, 64th … (a flood does not flood
    /// the log).
    pub(super) fn log(&self, what: &str, count: u64) {
        if count <= 16 || count.is_power_of_two() {
            eprintln!("{}: {what} ({count} so far)", self.me);
        }
    }
}
