//! Device profiles: what each device can hold and compute, and the links between them.
//!
//! ```toml
//! [[device]]
//! name = "high-end"
//! memory = "3.5 GiB"          # usable memory
//! flops = "60 GFLOP/s"        # sustained; or per compute dtype: { f32 = "…", f16 = "…" }
//! bandwidth = "20 GB/s"       # memory bandwidth
//!
//! [default_link]              # every pair not listed below
//! bandwidth = "100 Mbit/s"
//! latency = "5 ms"
//!
//! [[link]]
//! between = ["high-end", "mid-range"]
//! bandwidth = "300 Mbit/s"
//! latency = "2 ms"
//! ```
//!
//! Every error names the file and, where it has one, the line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::kernels::{kernels_toml, Kernels, RawKernels};
use crate::quantity::{self, Kind};

/// A device.
#[derive(Clone, Debug, PartialEq)]
pub struct Device {
    pub name: String,
    /// Usable memory, bytes.
    pub memory: f64,
    /// Sustained FLOP/s per compute dtype name (`f32`, `f16`, …); `*` applies to all.
    pub flops: BTreeMap<String, f64>,
    /// Memory bandwidth, bytes/s.
    pub bandwidth: f64,
    /// What the runtime's kernels reach here (`[device.kernels]`, written by `shardc
    /// profile`): when given, node times come from it instead of FLOP/s and bandwidth.
    pub kernels: Option<Kernels>,
}

impl Device {
    /// FLOP/s for a compute dtype (`f32`, `f16`, `bf16`): its own entry, else the one
    /// figure given for every dtype; none when the device's table lists other dtypes
    /// only (another dtype's speed is not this one's: [`Profile::check_compute_dtype`]).
    pub fn flops_for(&self, dtype: &str) -> Option<f64> {
        self.flops.get(dtype).or_else(|| self.flops.get("*")).copied()
    }
}

/// A set of devices and their links.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub devices: Vec<Device>,
    pub default_link: Link,
    /// Links listed explicitly, by device index pair (smaller first).
    pub links: BTreeMap<(usize, usize), Link>,
}

impl Profile {
    /// Every device states its FLOP/s for `dtype` (or one figure for all): a profile
    /// written for other dtypes is refused naming the missing key, never read as
    /// another dtype's figure.
    pub fn check_compute_dtype(&self, dtype: &str) -> Result<(), String> {
        for d in &self.devices {
            if d.flops_for(dtype).is_none() {
                let listed: Vec<&str> = d.flops.keys().map(String::as_str).collect();
                let other = listed.first().map_or(String::new(), |o| format!(", or plan with --compute-dtype {o}"));
                return Err(format!(
                    "device `{}` states its FLOP/s for {} but not for {dtype}, the compute dtype: add `{dtype} = \"…\"` \
                     to its `flops` (`shardc profile` on the device measures it){other}",
                    d.name,
                    listed.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The link between two devices (symmetric).
    pub fn link(&self, a: usize, b: usize) -> Link {
        let key = (a.min(b), a.max(b));
        self.links.get(&key).copied().unwrap_or(self.default_link)
    }

    /// Index of a device by name.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.devices.iter().position(|d| d.name == name)
    }
}

/// A profile that could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ProfileError {
    pub file: PathBuf,
    /// 1-based line, when the problem has a place.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    #[serde(default)]
    device: Vec<RawDevice>,
    default_link: Option<RawLink>,
    #[serde(default)]
    link: Vec<RawLink>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    name: Spanned<String>,
    memory: Spanned<String>,
    flops: Spanned<RawFlops>,
    bandwidth: Spanned<String>,
    kernels: Option<Spanned<RawKernels>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawFlops {
    One(String),
    PerDtype(BTreeMap<String, String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    between: Option<Spanned<Vec<String>>>,
    bandwidth: Spanned<String>,
    latency: Spanned<String>,
}

/// Most devices a profile may list.
pub const MAX_DEVICES: usize = 4096;

pub use shardc_format::names::{check_name, MAX_NAME, RESERVED_NAMES};
pub use shardc_format::problem::Link;

/// Read a profile from a TOML file.
pub fn load(path: &Path) -> Result<Profile, ProfileError> {
    let text = shardc_format::files::read_text(path).map_err(|e| ProfileError {
        file: path.to_path_buf(),
        line: None,
        message: format!("cannot read: {e}"),
    })?;
    parse(&text, path)
}

/// Parse profile `text`; `path` names it in errors.
pub fn parse(text: &str, path: &Path) -> Result<Profile, ProfileError> {
    let line_of =
        |offset: usize| Some(text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1);
    let err = |span: Option<std::ops::Range<usize>>, message: String| ProfileError {
        file: path.to_path_buf(),
        line: span.and_then(|s| line_of(s.start)),
        message,
    };
    let raw: RawProfile = toml::from_str(text).map_err(|e| err(e.span(), e.message().to_string()))?;
    if raw.device.is_empty() {
        return Err(err(None, "no devices: add at least one [[device]] table".into()));
    }
    let positive = |value: &Spanned<String>, kind: Kind, what: &str| -> Result<f64, ProfileError> {
        let v = quantity::parse(value.get_ref(), kind).map_err(|m| err(Some(value.span()), format!("{what}: {m}")))?;
        if v <= 0.0 {
            return Err(err(Some(value.span()), format!("{what} must be positive, is `{}`", value.get_ref())));
        }
        Ok(v)
    };
    let mut devices: Vec<Device> = Vec::new();
    for d in &raw.device {
        let name = d.name.get_ref().to_string();
        check_name(&name).map_err(|m| err(Some(d.name.span()), m))?;
        if let Some(x) = devices.iter().find(|x| x.name.eq_ignore_ascii_case(&name)) {
            let how = if x.name == name {
                "is listed twice".to_string()
            } else {
                format!("differs from `{}` only in case (they would share a folder on some file systems)", x.name)
            };
            return Err(err(Some(d.name.span()), format!("device `{name}` {how}")));
        }
        if devices.len() == MAX_DEVICES {
            return Err(err(Some(d.name.span()), format!("more than {MAX_DEVICES} devices")));
        }
        let what = |key: &str| format!("device `{name}`: {key}");
        let memory = positive(&d.memory, Kind::Bytes, &what("memory"))?;
        let bandwidth = positive(&d.bandwidth, Kind::Bandwidth, &what("bandwidth"))?;
        let mut flops = BTreeMap::new();
        match d.flops.get_ref() {
            RawFlops::One(v) => {
                flops.insert(
                    "*".to_string(),
                    positive(&Spanned::new(d.flops.span(), v.clone()), Kind::Flops, &what("flops"))?,
                );
            }
            RawFlops::PerDtype(map) => {
                if map.is_empty() {
                    return Err(err(Some(d.flops.span()), format!("{}: give at least one dtype", what("flops"))));
                }
                for (dtype, v) in map {
                    let q = positive(
                        &Spanned::new(d.flops.span(), v.clone()),
                        Kind::Flops,
                        &what(&format!("flops.{dtype}")),
                    )?;
                    flops.insert(dtype.clone(), q);
                }
            }
        }
        let kernels = match &d.kernels {
            Some(k) => Some(k.get_ref().parse(&format!("device `{name}`")).map_err(|m| err(Some(k.span()), m))?),
            None => None,
        };
        devices.push(Device { name, memory, flops, bandwidth, kernels });
    }
    let link = |l: &RawLink, what: &str| -> Result<Link, ProfileError> {
        Ok(Link {
            bandwidth: positive(&l.bandwidth, Kind::Bandwidth, &format!("{what}: bandwidth"))?,
            latency: {
                let v = quantity::parse(l.latency.get_ref(), Kind::Duration)
                    .map_err(|m| err(Some(l.latency.span()), format!("{what}: latency: {m}")))?;
                if v < 0.0 {
                    return Err(err(Some(l.latency.span()), format!("{what}: latency must not be negative")));
                }
                v
            },
        })
    };
    let default_link = match &raw.default_link {
        Some(l) => {
            if let Some(b) = &l.between {
                return Err(err(Some(b.span()), "default_link applies to every pair; it takes no `between`".into()));
            }
            link(l, "default_link")?
        }
        None if devices.len() > 1 && raw.link.is_empty() => {
            return Err(err(None, "no [default_link] and no [[link]]: say how the devices are connected".into()))
        }
        None => Link { bandwidth: f64::INFINITY, latency: 0.0 },
    };
    let mut links = BTreeMap::new();
    for l in &raw.link {
        let between = l
            .between
            .as_ref()
            .ok_or_else(|| err(Some(l.bandwidth.span()), "a [[link]] needs `between = [\"a\", \"b\"]`".into()))?;
        let [a, b] = between.get_ref().as_slice() else {
            return Err(err(Some(between.span()), "`between` names exactly two devices".into()));
        };
        let find = |n: &str| {
            devices
                .iter()
                .position(|d| d.name == n)
                .ok_or_else(|| err(Some(between.span()), format!("link names unknown device `{n}`")))
        };
        let (ia, ib) = (find(a)?, find(b)?);
        if ia == ib {
            return Err(err(Some(between.span()), format!("link from `{a}` to itself")));
        }
        let key = (ia.min(ib), ia.max(ib));
        if links.insert(key, link(l, &format!("link {a} – {b}"))?).is_some() {
            return Err(err(Some(between.span()), format!("link {a} – {b} is listed twice")));
        }
    }
    if devices.len() > 1 && raw.default_link.is_none() {
        // Without a default, every pair must be listed.
        for a in 0..devices.len() {
            for b in a + 1..devices.len() {
                if !links.contains_key(&(a, b)) {
                    return Err(err(
                        None,
                        format!(
                            "no link between `{}` and `{}` and no [default_link]",
                            devices[a].name, devices[b].name
                        ),
                    ));
                }
            }
        }
    }
    Ok(Profile { devices, default_link, links })
}

/// The profile as TOML (what `shardc profile` prints for a device).
pub fn device_toml(d: &Device) -> String {
    let mut out = String::from("[[device]]\n");
    out.push_str(&format!("name = \"{}\"\n", d.name));
    out.push_str(&format!("memory = \"{}\"\n", quantity::bytes_text(d.memory)));
    if d.flops.len() == 1 && d.flops.contains_key("*") {
        out.push_str(&format!("flops = \"{}\"\n", quantity::text(d.flops["*"], Kind::Flops)));
    } else {
        let parts: Vec<String> =
            d.flops.iter().map(|(k, v)| format!("{k} = \"{}\"", quantity::text(*v, Kind::Flops))).collect();
        out.push_str(&format!("flops = {{ {} }}\n", parts.join(", ")));
    }
    out.push_str(&format!("bandwidth = \"{}\"\n", quantity::text(d.bandwidth, Kind::Bandwidth)));
    if let Some(k) = &d.kernels {
        out.push_str(&kernels_toml(k));
    }
    out
}
