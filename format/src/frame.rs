//! Frame metadata: what a message between client and devices is, besides its tensors.
//!
//! A frame is a safetensors file in memory (see the runtime's `frame` module, which
//! encodes and decodes it with the `safetensors` crate); its `__metadata__` map holds
//! a [`Meta`]: the message [`Kind`], the request id, the decode step, the sender and,
//! for control messages, a body ([`Rebalance`], [`Ready`], [`Timing`], [`KvMove`] as
//! JSON, or an error's text).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::balance::Route;

/// What a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Inputs of a step (token ids from the client, activations from a device).
    Tensors,
    /// A stage finished a step (its timings).
    Done,
    /// Free a request's KV cache.
    End,
    /// Stop serving.
    Stop,
    /// Move to a new plan (body: [`Rebalance`]).
    Rebalance,
    /// KV cache handed from device to device while rebalancing.
    Kv,
    /// A device switched plans (body: [`Ready`]).
    Ready,
    /// The client opens a session; devices answer `Opened`.
    Open,
    Opened,
    /// The client ends its session.
    Close,
    /// A device could not do what a message asked (body: why).
    Error,
    /// The client is still there (keeps its session open).
    Alive,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::Tensors,
        Kind::Done,
        Kind::End,
        Kind::Stop,
        Kind::Rebalance,
        Kind::Kv,
        Kind::Ready,
        Kind::Open,
        Kind::Opened,
        Kind::Close,
        Kind::Error,
        Kind::Alive,
    ];

    /// The name frames carry.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Tensors => "tensors",
            Kind::Done => "done",
            Kind::End => "end",
            Kind::Stop => "stop",
            Kind::Rebalance => "rebalance",
            Kind::Kv => "kv",
            Kind::Ready => "ready",
            Kind::Open => "open",
            Kind::Opened => "opened",
            Kind::Close => "close",
            Kind::Error => "error",
            Kind::Alive => "alive",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The metadata of one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    pub request: u64,
    pub step: u64,
    pub sender: String,
    /// Control messages' body (JSON, or an error's text), empty for tensor messages.
    pub info: String,
}

impl Meta {
    /// As the safetensors `__metadata__` map (strings only).
    pub fn to_map(&self) -> HashMap<String, String> {
        let mut map = HashMap::from([
            ("kind".to_string(), self.kind.name().to_string()),
            ("request".to_string(), self.request.to_string()),
            ("step".to_string(), self.step.to_string()),
            ("sender".to_string(), self.sender.clone()),
        ]);
        if !self.info.is_empty() {
            map.insert("info".to_string(), self.info.clone());
        }
        map
    }

    /// From a `__metadata__` map: every key known, every field there and well formed.
    pub fn from_map(map: &HashMap<String, String>) -> Result<Meta, String> {
        if let Some(k) = map.keys().find(|k| !["kind", "request", "step", "sender", "info"].contains(&k.as_str())) {
            return Err(format!("unknown metadata `{k}`"));
        }
        let field = |k: &str| map.get(k).ok_or_else(|| format!("metadata lacks `{k}`"));
        let kind = field("kind")?;
        let kind = Kind::from_name(kind).ok_or_else(|| format!("unknown message kind `{kind}`"))?;
        let number = |k: &str| field(k)?.parse::<u64>().map_err(|_| format!("{k} is not a number"));
        Ok(Meta {
            kind,
            request: number("request")?,
            step: number("step")?,
            sender: field("sender")?.clone(),
            info: map.get("info").cloned().unwrap_or_default(),
        })
    }
}

/// The body of a `rebalance` message: the new plan, the requests whose KV cache must
/// follow their layers, and where every crossing tensor goes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rebalance {
    pub epoch: u64,
    /// Device of each stage, in pipeline order.
    pub stages: Vec<String>,
    /// Units `[start, end)` of each stage.
    pub ranges: Vec<[usize; 2]>,
    pub requests: Vec<u64>,
    pub routes: BTreeMap<String, Route>,
}

/// The body of a `done` message: what one step took on a stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// Running the step (slowdown included), ms.
    pub compute_ms: f64,
    /// From the first input's arrival to the last's, ms.
    pub waiting_ms: f64,
    /// Sending the outputs, ms.
    pub send_ms: f64,
}

/// The body of a `kv` message (besides its tensors): the plan it moves to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvMove {
    pub epoch: u64,
}

/// The body of a `ready` message.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ready {
    pub epoch: u64,
    /// Why the device could not switch.
    pub error: Option<String>,
    /// Cutting and loading the new stage, ms.
    pub rebuild_ms: f64,
    /// KV-cache bytes this device sent to others.
    pub kv_sent_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta { kind: Kind::Ready, request: 7, step: u64::MAX, sender: "dev-a".into(), info: "{}".into() }
    }

    #[test]
    fn metadata_round_trips_and_every_kind_has_a_name() {
        assert_eq!(Meta::from_map(&meta().to_map()), Ok(meta()));
        let plain = Meta { info: String::new(), ..meta() };
        assert!(!plain.to_map().contains_key("info"));
        assert_eq!(Meta::from_map(&plain.to_map()), Ok(plain));
        for k in Kind::ALL {
            assert_eq!(Kind::from_name(k.name()), Some(k));
        }
    }

    #[test]
    fn metadata_is_refused_by_name() {
        let with = |key: &str, value: Option<&str>| {
            let mut m = meta().to_map();
            match value {
                Some(v) => m.insert(key.to_string(), v.to_string()),
                None => m.remove(key),
            };
            Meta::from_map(&m).unwrap_err()
        };
        assert!(with("sender", None).contains("lacks `sender`"));
        assert!(with("kind", Some("teleport")).contains("unknown message kind `teleport`"));
        assert!(with("step", Some("-1")).contains("step is not a number"));
        assert!(with("request", Some("1e3")).contains("request is not a number"));
        assert!(with("epoch", Some("1")).contains("unknown metadata `epoch`"));
    }
}
