//! A compile output as the runtime reads it: `transmission_map.json` and every
//! package's manifest, checked against each other (stage order, peers both ways,
//! device-local state, a language model's token input and logits, `balance.json`
//! exactly when packages hold standby units).

use std::collections::BTreeMap;
use std::path::Path;

use shardc_format::manifest::Manifest;
use shardc_format::{Endpoint, TransmissionMap};

use crate::package::{err, load_manifest, mismatch, read_hashed, read_manifest, ALTERED_SHARED, MAX_PACKAGE_TEXT};
use crate::RuntimeError;

/// The packages of an output folder are stages `0..n` of one `n`-stage pipeline, each
/// once.
pub fn check_stages<'a>(out: &Path, manifests: impl Iterator<Item = &'a Manifest>) -> Result<(), RuntimeError> {
    let mut seen: BTreeMap<usize, &str> = BTreeMap::new();
    let mut total = None;
    for m in manifests {
        if *total.get_or_insert(m.stages) != m.stages {
            return Err(err(
                out,
                format!("`{}` says {} stages, another package {}", m.device, m.stages, total.unwrap_or(0)),
            ));
        }
        if let Some(other) = seen.insert(m.stage, &m.device) {
            return Err(err(out, format!("`{other}` and `{}` are both stage {}", m.device, m.stage)));
        }
    }
    let n = total.unwrap_or(0);
    if seen.len() != n {
        let missing: Vec<String> = (0..n).filter(|s| !seen.contains_key(s)).map(|s| s.to_string()).collect();
        return Err(err(out, format!("no package for stage {} of {n}", missing.join(", "))));
    }
    Ok(())
}

/// A compile output as the runtime needs it: the transmission map and every package's
/// manifest in pipeline order, checked against each other.
pub struct Output {
    pub map: TransmissionMap,
    /// In pipeline order.
    pub manifests: Vec<Manifest>,
    /// `balance.json`, when the packages hold standby units.
    pub balance: Option<crate::balance::BalanceSpec>,
}

/// Read `out/transmission_map.json` and every package's manifest (with `hash`, also
/// every file's hash) and check that they describe one pipeline: the map's stages are
/// the packages in stage order, each package takes and gives what the map says and
/// from and to whom, device-local state agrees, a language model's token input and
/// logits travel between the client and a stage, and `balance.json` is there exactly
/// when packages hold standby units. This is everything `shardc-run` reads to run.
pub fn load_output(out: &Path, hash: bool) -> Result<Output, RuntimeError> {
    let map_path = out.join("transmission_map.json");
    let text = shardc_format::files::read_bounded(&map_path, MAX_PACKAGE_TEXT)
        .map_err(|e| err(&map_path, format!("cannot read: {e}")))?;
    let reads = shardc_format::map::FORMAT;
    if let Some(format) = shardc_format::format_of(&text).filter(|f| *f != reads) {
        return Err(err(&map_path, format!("transmission map format {format} (this runtime reads {reads})")));
    }
    let map: TransmissionMap =
        serde_json::from_slice(&text).map_err(|e| err(&map_path, format!("not a transmission map: {e}")))?;
    let map_hash = blake3::hash(&text).to_hex().to_string();
    let bad = |m: String| err(&map_path, m);
    if map.stages.is_empty() {
        return Err(bad("lists no stages".into()));
    }
    let mut manifests = Vec::new();
    for device in &map.stages {
        shardc_passes::devices::check_name(device).map_err(&bad)?;
        let dir = out.join(device);
        let m = if hash { load_manifest(&dir)? } else { read_manifest(&dir)? };
        manifests.push(m);
    }
    check_stages(out, manifests.iter())?;
    // The map (and balance.json) are the ones every package was compiled with.
    let shared = &manifests[0].shared;
    if let Some(m) = manifests.iter().find(|m| m.shared != *shared) {
        return Err(err(
            &out.join(&m.device).join("manifest.json"),
            format!(
                "hashes other shared files than `{}`'s: the packages come from different compiles",
                manifests[0].device
            ),
        ));
    }
    let recorded = shared.get("transmission_map.json").map_or("(none)", String::as_str);
    if recorded != map_hash {
        return Err(mismatch(&map_path, &map_hash, recorded, ALTERED_SHARED));
    }
    for (i, m) in manifests.iter().enumerate() {
        if m.stage != i || m.stages != map.stages.len() {
            return Err(bad(format!(
                "puts `{}` at stage {i} of {}, its manifest at stage {} of {}",
                m.device,
                map.stages.len(),
                m.stage,
                m.stages
            )));
        }
    }
    // Every other folder with a manifest would be a package nobody runs.
    let entries = std::fs::read_dir(out).map_err(|e| err(out, format!("cannot read: {e}")))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().join("manifest.json").exists() && !map.stages.contains(&name) {
            return Err(bad(format!("does not list the package `{name}`")));
        }
    }
    let known = |who: &Endpoint| who.device().is_none_or(|d| map.stages.iter().any(|s| s == d));
    for t in &map.transfers {
        if let Some(who) = std::iter::once(&t.from).chain(&t.to).find(|w| !known(w)) {
            return Err(bad(format!(
                "tensor `{}` travels to or from `{who}`, which is no stage and not the client",
                t.tensor
            )));
        }
    }
    for m in &manifests {
        let local = sorted(map.device_local.get(&m.device).cloned().unwrap_or_default());
        if sorted(m.device_local.clone()) != local {
            return Err(bad(format!("keeps {local:?} on `{}`, its manifest {:?}", m.device, m.device_local)));
        }
        for p in &m.inputs {
            let from = sorted(
                map.transfers
                    .iter()
                    .filter(|t| t.tensor == p.name && t.to.iter().any(|w| w.is_device(&m.device)))
                    .map(|t| t.from.clone())
                    .collect(),
            );
            if from.is_empty() || sorted(p.peers.clone()) != from {
                return Err(bad(format!(
                    "sends `{}` to `{}` from {from:?}, its manifest expects it from {:?}",
                    p.name, m.device, p.peers
                )));
            }
        }
        for p in &m.outputs {
            let to = sorted(
                map.transfers
                    .iter()
                    .filter(|t| t.tensor == p.name && t.from.is_device(&m.device))
                    .flat_map(|t| t.to.clone())
                    .collect(),
            );
            if sorted(p.peers.clone()) != to {
                return Err(bad(format!(
                    "sends `{}` from `{}` to {to:?}, its manifest to {:?}",
                    p.name, m.device, p.peers
                )));
            }
        }
    }
    if let Some(g) = &map.generation {
        let takes =
            map.transfers.iter().any(|t| t.tensor == g.token_input && t.from == Endpoint::Client && !t.to.is_empty());
        let gives = map.transfers.iter().any(|t| t.tensor == g.logits && t.to.contains(&Endpoint::Client));
        if !takes || !gives {
            return Err(bad(format!(
                "its language model does not take `{}` from the client or give `{}` to it",
                g.token_input, g.logits
            )));
        }
        let cached = manifests.iter().any(|m| !m.device_local.is_empty());
        if g.kv_cache != cached {
            return Err(bad(format!(
                "says kv_cache {}, but the packages {} a KV cache",
                g.kv_cache,
                if cached { "keep" } else { "keep no" }
            )));
        }
    }
    let holds = manifests.iter().filter(|m| m.held.is_some()).count();
    // balance.json: hashed and parsed from the same bytes.
    let balance_path = out.join("balance.json");
    let balance = match (shared.get("balance.json"), balance_path.exists()) {
        (Some(expected), true) => {
            let bytes = read_hashed(&balance_path, expected, ALTERED_SHARED)?;
            Some(crate::balance::BalanceSpec::parse(&bytes, &balance_path).map_err(RuntimeError::File)?)
        }
        (None, false) => None,
        (Some(_), false) => {
            return Err(err(&balance_path, "is missing, but the packages were compiled with it".into()))
        }
        (None, true) => return Err(err(&balance_path, "is not one the packages were compiled with".into())),
    };
    match (&balance, holds) {
        (None, 0) => {}
        (Some(spec), n) if n == manifests.len() => {
            if spec.stage_devices(&spec.plan) != map.stages {
                return Err(err(
                    &out.join("balance.json"),
                    format!(
                        "stages {:?} are not the transmission map's {:?}",
                        spec.stage_devices(&spec.plan),
                        map.stages
                    ),
                ));
            }
        }
        (None, _) => return Err(err(out, "packages hold standby units, but balance.json is missing".into())),
        (Some(_), _) => {
            return Err(err(out, "balance.json is there, but not every package holds standby units".into()))
        }
    }
    Ok(Output { map, manifests, balance })
}

/// A list as a set: sorted, each element once.
fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v.dedup();
    v
}
