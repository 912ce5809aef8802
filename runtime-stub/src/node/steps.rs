//! A device's ready steps: run together as one batched step, or one by one, and each
//! step's outputs sent on; how long ready steps wait for others to batch with.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ndarray::{ArrayD, IxDyn};

use crate::frame::{Body, Frame, Timing};
use crate::Tensor;

use super::device::Device;
use super::NetError;

/// Longest a ready step waits for other requests' steps to batch with.
const MAX_BATCH_WAIT: Duration = Duration::from_millis(20);

/// Whether a request whose last step here finished at `finished`, its round trip before
/// that taking `trip`, is due by `deadline`: its next step is expected a round trip after
/// the last, give or take a quarter of one (round trips on a busy machine vary), so it is
/// due when the earliest of that is by the deadline; due if its round trip is not known
/// yet. (Counted due only when the latest of that was by the deadline, no request ever
/// was at a stage whose batches take less than a quarter of a round trip — the short
/// stages of three devices — and their batches broke up into ones and twos.)
fn due(finished: Instant, trip: Option<Duration>, deadline: Instant) -> bool {
    trip.is_none_or(|t| finished + t - t / 4 <= deadline)
}

impl Device<'_> {
    /// Run the steps whose inputs are all here: together, as one batched step of the
    /// session (each request's own cache; products read their weights once for all),
    /// or one by one with `--no-batch`. Each step's reported compute time is its share
    /// of the batch's.
    pub(super) fn run_ready(&mut self) -> Result<(), NetError> {
        let keys = std::mem::take(&mut self.ready);
        self.ready_since = None;
        if keys.is_empty() {
            return Ok(());
        }
        let mut steps = Vec::with_capacity(keys.len());
        let mut waited = Vec::with_capacity(keys.len());
        for key in &keys {
            waited.push(self.first_arrival.remove(key).map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3));
            let mut inputs: Vec<(String, Tensor)> = self.pending.remove(key).unwrap_or_default().into_iter().collect();
            let cache = self.caches.entry(key.0).or_default();
            for entry in &self.active.cache {
                let t =
                    cache.remove(&entry.past).unwrap_or_else(|| Tensor::f32(ArrayD::zeros(IxDyn(&entry.empty_shape))));
                inputs.push((entry.past.clone(), t));
            }
            steps.push(inputs);
        }
        let started = Instant::now();
        let results = if self.opts.batch {
            self.active.session.run_batch(steps)
        } else {
            steps.into_iter().map(|s| self.active.session.run(s)).collect()
        };
        let factor = keys.iter().map(|k| self.opts.slowdown.at(k.1)).fold(1.0, f64::max);
        if factor > 1.0 {
            std::thread::sleep(started.elapsed().mul_f64(factor - 1.0));
        }
        self.last_batch = started.elapsed();
        let compute_ms = self.last_batch.as_secs_f64() * 1e3 / keys.len() as f64;
        for ((key, result), waiting_ms) in keys.into_iter().zip(results).zip(waited) {
            self.finish_step(key, result, compute_ms, waiting_ms)?;
        }
        Ok(())
    }

    /// How much longer the ready steps wait for the next steps of other requests this
    /// device serves (`None`: run now). A client answers requests one after another, so
    /// steps that could run together arrive a little apart. The steps wait while some
    /// request not here is due by the deadline — the last batch's compute time (at most
    /// [`MAX_BATCH_WAIT`]) after the first ready step ([`due`]). Requests a whole
    /// pipeline behind are not due: their group runs apart, as a pipeline's groups should.
    pub(super) fn batch_wait(&self) -> Option<Duration> {
        let since = self.ready_since?;
        if !self.opts.batch {
            return None;
        }
        let deadline = since + self.last_batch.min(MAX_BATCH_WAIT);
        let here: BTreeSet<u64> = self.ready.iter().map(|k| k.0).collect();
        if !self.expected.iter().any(|(r, &(finished, trip))| !here.contains(r) && due(finished, trip, deadline)) {
            return None;
        }
        deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
    }

    /// Keep a step's cache, send its outputs to their readers and its time to the client.
    fn finish_step(
        &mut self,
        key: (u64, u64),
        result: Result<Vec<(String, Tensor)>, crate::RuntimeError>,
        compute_ms: f64,
        waiting_ms: f64,
    ) -> Result<(), NetError> {
        let device = self.name.clone();
        let outputs = match result {
            Ok(o) => {
                let trip = self.expected.get(&key.0).and_then(|e| e.1);
                self.expected.insert(key.0, (Instant::now(), trip));
                o
            }
            Err(e) => {
                self.expected.remove(&key.0);
                eprintln!("{device}: request {} step {}: {e}", key.0, key.1);
                let session = self.session.map(|s| s.0).ok_or("no session is open")?;
                return self.report_error(&session, key.0, key.1, format!("request {} step {}: {e}", key.0, key.1));
            }
        };
        let send_started = Instant::now();
        let cache = self.caches.entry(key.0).or_default();
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
            self.send_to(&peer, &Frame::new(key.0, key.1, &device, Body::Tensors(tensors)))?;
        }
        let timing = Timing { compute_ms, waiting_ms, send_ms: send_started.elapsed().as_secs_f64() * 1e3 };
        self.send_to("client", &Frame::new(key.0, key.1, &device, Body::Done(timing)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::due;

    #[test]
    fn a_request_is_due_from_a_quarter_of_its_round_trip_before_it_is_expected() {
        let (t0, ms) = (Instant::now(), Duration::from_millis);
        // Expected back 40 ms after its last step: due by a deadline from 30 ms on.
        assert!(due(t0, Some(ms(40)), t0 + ms(35)));
        assert!(due(t0, Some(ms(40)), t0 + ms(30)));
        assert!(!due(t0, Some(ms(40)), t0 + ms(29)));
        // A request a pipeline behind (its last step later): not due by the same deadline.
        assert!(!due(t0 + ms(20), Some(ms(40)), t0 + ms(35)));
        // Its round trip not known yet: due.
        assert!(due(t0 + ms(100), None, t0));
    }
}
