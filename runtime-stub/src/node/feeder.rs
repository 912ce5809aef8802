//! What the client feeds each request's steps: which wire id carries it and how many
//! tokens its devices have seen (the prompt once, then one token per step — or, without
//! a KV cache or past a recompute threshold, every token).

use std::collections::HashMap;

use crate::frame::{Body, Frame};

use super::client::Client;
use super::NetError;

/// Per request: the wire id that carries it and the tokens its devices have seen.
pub(super) struct Feeder<'a> {
    /// Whether the packages keep a KV cache.
    pub(super) cached: bool,
    /// The context past which the cache is recomputed (`Graph::recompute_beyond`).
    pub(super) recompute_beyond: Option<u64>,
    pub(super) prompt: &'a [i64],
    /// Request index of each wire id in flight.
    pub(super) owner: HashMap<u64, usize>,
    pub(super) next_wire: u64,
    /// Tokens each request's devices have been sent.
    pub(super) fed: Vec<usize>,
    /// Tokens sent per step of request 0.
    pub(super) ids_sent: Vec<usize>,
}

impl Feeder<'_> {
    /// The request a wire id carries.
    pub(super) fn request(&self, wire: u64) -> Result<usize, NetError> {
        self.owner.get(&wire).copied().ok_or_else(|| NetError::Other(format!("unknown request {wire}")))
    }

    /// Send request `r`'s next step after step `key` produced `generated`'s last
    /// token: with a KV cache the one new token, or — when it first takes the context
    /// past `recompute_beyond` — every token under a new wire id, the old one's cache
    /// ended on every device; without a cache every token, as the next step of the
    /// same wire id. Returns the wire id and step sent.
    pub(super) fn advance(
        &mut self,
        client: &mut Client,
        stages: &[String],
        key: (u64, u64),
        r: usize,
        generated: &[i64],
    ) -> Result<(u64, u64), NetError> {
        let past = self.fed[r];
        let all = || -> Vec<i64> { self.prompt.iter().chain(generated).copied().collect() };
        let recompute = crate::generate::recomputes(self.recompute_beyond, past, 1);
        let (wire, step, ids, fed) = if !self.cached {
            let ids = all();
            let n = ids.len();
            (key.0, key.1 + 1, ids, n)
        } else if recompute {
            for d in stages {
                client.send_to(d, &Frame::new(key.0, key.1, "client", Body::End))?;
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
