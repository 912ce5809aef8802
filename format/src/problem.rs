//! The partitioning problem, abstracted from graphs: a chain of units, devices with
//! per-unit times and memory budgets, and the bytes that cross each cut.
//!
//! A [`Plan`] is an ordered list of stages; each stage is one device running a
//! contiguous run of units, devices distinct. [`Problem::evaluate`] is the single
//! definition of feasibility and cost that every strategy is measured by — the
//! compiler's planners and the runtime's balancer alike, which is why the problem
//! lives here: `balance.json` carries it from one to the other.

/// What a plan minimises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// One request end to end: prefill plus every decode step, compute and links.
    Latency,
    /// Pipelined decode: the slowest stage or link.
    Throughput,
}

impl std::str::FromStr for Objective {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "latency" => Ok(Objective::Latency),
            "throughput" => Ok(Objective::Throughput),
            _ => Err(format!("unknown objective `{s}` (latency, throughput)")),
        }
    }
}

/// A network link.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Link {
    /// Bytes/s (infinite for a device to itself; `null` in JSON).
    #[serde(with = "infinite_as_null")]
    pub bandwidth: f64,
    /// Seconds per message.
    pub latency: f64,
}

/// JSON has no infinity: an infinite bandwidth is written as `null`.
pub(crate) mod infinite_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
    }
}

impl Link {
    /// Time to send `bytes` as one message.
    pub fn time(&self, bytes: f64) -> f64 {
        if bytes <= 0.0 {
            0.0
        } else {
            bytes / self.bandwidth + self.latency
        }
    }
}

/// A weight that several units read (tied embeddings): stored once per device.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SharedWeight {
    pub bytes: f64,
    pub units: Vec<UnitId>,
}

/// A partitioning problem.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// Prefill seconds of unit `u` on device `d`: `prefill[d][u]`.
    pub prefill: Vec<Vec<f64>>,
    /// Decode seconds per token of unit `u` on device `d`.
    pub decode: Vec<Vec<f64>>,
    /// Bytes unit `u` keeps resident that no other unit shares (weights, KV cache).
    pub private_bytes: Vec<f64>,
    /// Peak activation bytes while unit `u` runs.
    pub activation_bytes: Vec<f64>,
    pub shared: Vec<SharedWeight>,
    /// Usable bytes per device (after the safety margin).
    pub budget: Vec<f64>,
    /// Bytes crossing the cut after unit `u` (`u < units - 1`), prefill and decode.
    pub cut_prefill: Vec<f64>,
    pub cut_decode: Vec<f64>,
    /// `links[a][b]`.
    pub links: Vec<Vec<Link>>,
    /// Decode steps in one request (for the latency objective).
    pub decode_tokens: f64,
    pub objective: Objective,
}

/// An index newtype: serialised as the number, indexing `Vec<T>` and `[T]` directly.
macro_rules! index_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub usize);

        impl $name {
            pub fn index(self) -> usize {
                self.0
            }

            /// The first `n`, in order.
            pub fn all(n: usize) -> impl DoubleEndedIterator<Item = $name> + Clone {
                (0..n).map($name)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl<T> std::ops::Index<$name> for Vec<T> {
            type Output = T;
            fn index(&self, i: $name) -> &T {
                &self[i.0]
            }
        }

        impl<T> std::ops::IndexMut<$name> for Vec<T> {
            fn index_mut(&mut self, i: $name) -> &mut T {
                &mut self[i.0]
            }
        }

        impl<T> std::ops::Index<$name> for [T] {
            type Output = T;
            fn index(&self, i: $name) -> &T {
                &self[i.0]
            }
        }
    };
}

index_id!(
    /// A device: its index in the device profile, and so in every per-device table of
    /// a [`Problem`] (`budget[device]`, `prefill[device][unit]`).
    DeviceId
);

index_id!(
    /// A unit: its position in the model's chain of units (embedding, layers' attention
    /// and MLP, head). Stages hold contiguous runs `start..end` of them, whose bounds
    /// are cut positions (`0..=units`), not units, and stay plain numbers.
    UnitId
);

index_id!(
    /// A stage: its position in a plan (pipeline order).
    StageId
);

/// One stage: a device and the units `start..end` (positions in the chain of units,
/// slice bounds of every per-unit table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stage {
    pub device: DeviceId,
    pub start: usize,
    pub end: usize,
}

impl Stage {
    /// Whether the stage runs unit `u`.
    pub fn runs(&self, u: UnitId) -> bool {
        (self.start..self.end).contains(&u.0)
    }
}

/// Stages in pipeline order.
pub type Plan = Vec<Stage>;

/// The figures of a plan.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Figures {
    pub feasible: bool,
    /// Objective value (seconds: request latency, or the decode bottleneck).
    pub objective: f64,
    /// Prefill latency, seconds (compute plus links).
    pub prefill_s: f64,
    /// Decode time per token through every stage, seconds.
    pub decode_s: f64,
    /// Pipelined decode bottleneck, seconds (slowest stage or link).
    pub bottleneck_s: f64,
    /// Per stage: memory used, prefill and decode compute, outgoing link times.
    pub stages: Vec<StageFigures>,
}

/// Figures of one stage.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StageFigures {
    pub memory: f64,
    pub budget: f64,
    pub prefill_s: f64,
    pub decode_s: f64,
    /// To the next stage (0 for the last).
    pub link_prefill_s: f64,
    pub link_decode_s: f64,
}

impl Problem {
    pub fn units(&self) -> usize {
        self.private_bytes.len()
    }

    pub fn devices(&self) -> usize {
        self.budget.len()
    }

    /// Memory of units `start..end` on one device: private bytes, each shared weight
    /// once, and the largest activation.
    pub fn memory(&self, start: usize, end: usize) -> f64 {
        let private: f64 = self.private_bytes[start..end].iter().sum();
        let shared: f64 =
            self.shared.iter().filter(|w| w.units.iter().any(|u| (start..end).contains(&u.0))).map(|w| w.bytes).sum();
        let peak = self.activation_bytes[start..end].iter().fold(0.0f64, |m, &a| m.max(a));
        private + shared + peak
    }

    /// Link times (prefill, decode) across the cut after unit `cut`, from `a` to `b`.
    pub fn link_times(&self, cut: usize, a: DeviceId, b: DeviceId) -> (f64, f64) {
        let l = self.links[a][b];
        (l.time(self.cut_prefill[cut]), l.time(self.cut_decode[cut]))
    }

    /// Check a plan's shape and compute its figures.
    pub fn evaluate(&self, plan: &[Stage]) -> Result<Figures, String> {
        if plan.is_empty() {
            return Err("empty plan".into());
        }
        let mut next = 0;
        let mut seen = vec![false; self.devices()];
        for s in plan {
            if s.start != next || s.end <= s.start || s.end > self.units() {
                return Err(format!("stages do not tile the units: {plan:?}"));
            }
            if s.device.index() >= self.devices() || std::mem::replace(&mut seen[s.device], true) {
                return Err(format!("device {} used twice or unknown", s.device));
            }
            next = s.end;
        }
        if next != self.units() {
            return Err(format!("stages cover {next} of {} units", self.units()));
        }
        let mut feasible = true;
        let mut stages = Vec::with_capacity(plan.len());
        for (i, s) in plan.iter().enumerate() {
            let memory = self.memory(s.start, s.end);
            let budget = self.budget[s.device];
            feasible &= memory <= budget;
            let prefill_s = self.prefill[s.device][s.start..s.end].iter().sum();
            let decode_s = self.decode[s.device][s.start..s.end].iter().sum();
            let (link_prefill_s, link_decode_s) = match plan.get(i + 1) {
                Some(n) => self.link_times(s.end - 1, s.device, n.device),
                None => (0.0, 0.0),
            };
            stages.push(StageFigures { memory, budget, prefill_s, decode_s, link_prefill_s, link_decode_s });
        }
        let prefill_s: f64 = stages.iter().map(|s| s.prefill_s + s.link_prefill_s).sum();
        let decode_s: f64 = stages.iter().map(|s| s.decode_s + s.link_decode_s).sum();
        let bottleneck_s = stages.iter().fold(0.0f64, |m, s| m.max(s.decode_s).max(s.link_decode_s));
        let objective = match self.objective {
            Objective::Latency => prefill_s + self.decode_tokens * decode_s,
            Objective::Throughput => bottleneck_s,
        };
        Ok(Figures { feasible, objective, prefill_s, decode_s, bottleneck_s, stages })
    }

    /// The units each stage of `plan` holds weights for when it also keeps up to `n`
    /// standby units beyond each of its boundaries: grown one unit at a time, before
    /// then after, while the held units fit the device's budget; then trimmed to what a
    /// stage can actually reach while every stage keeps at least one unit (a stage
    /// never starts before the earliest start of the one before it, plus one).
    pub fn standby(&self, plan: &[Stage], n: usize) -> Vec<std::ops::Range<usize>> {
        let mut held: Vec<std::ops::Range<usize>> = plan
            .iter()
            .map(|s| {
                let (mut start, mut end) = (s.start, s.end);
                // No stage holds more than every unit, however large `n` is.
                for _ in 0..n.min(self.units()) {
                    let before = (start, end);
                    if start > 0 && self.memory(start - 1, end) <= self.budget[s.device] {
                        start -= 1;
                    }
                    if end < self.units() && self.memory(start, end + 1) <= self.budget[s.device] {
                        end += 1;
                    }
                    if (start, end) == before {
                        break;
                    }
                }
                start..end
            })
            .collect();
        for j in 1..held.len() {
            held[j].start = held[j].start.max(held[j - 1].start + 1);
        }
        for j in (0..held.len().saturating_sub(1)).rev() {
            held[j].end = held[j].end.min(held[j + 1].end - 1);
        }
        held
    }

    /// The same problem on devices `factor[d]` times slower (compute only).
    pub fn slowed(&self, factor: &[f64]) -> Problem {
        let mut p = self.clone();
        for (d, &f) in factor.iter().enumerate() {
            p.prefill[d].iter_mut().for_each(|t| *t *= f);
            p.decode[d].iter_mut().for_each(|t| *t *= f);
        }
        p
    }

    /// Latency-objective cost of one stage (compute only).
    pub fn stage_latency(&self, d: DeviceId, start: usize, end: usize) -> f64 {
        let p: f64 = self.prefill[d][start..end].iter().sum();
        let q: f64 = self.decode[d][start..end].iter().sum();
        p + self.decode_tokens * q
    }

    /// Objective contribution of the link across the cut after unit `cut`.
    pub fn link_cost(&self, cut: usize, a: DeviceId, b: DeviceId) -> f64 {
        let (p, q) = self.link_times(cut, a, b);
        match self.objective {
            Objective::Latency => p + self.decode_tokens * q,
            Objective::Throughput => q,
        }
    }

    /// Objective contribution of a stage's compute.
    pub fn stage_cost(&self, d: DeviceId, start: usize, end: usize) -> f64 {
        match self.objective {
            Objective::Latency => self.stage_latency(d, start, end),
            Objective::Throughput => self.decode[d][start..end].iter().sum(),
        }
    }

    /// Combine costs the way the objective does (sum, or max).
    pub fn combine(&self, a: f64, b: f64) -> f64 {
        match self.objective {
            Objective::Latency => a + b,
            Objective::Throughput => a.max(b),
        }
    }
}
