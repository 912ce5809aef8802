//! `shardc compile`: one package per device plus the plan, the transmission map and a
//! picture of the plan, written atomically.
//!
//! ```text
//! OUT/plan.json  OUT/transmission_map.json  OUT/report.svg
//! OUT/<device>/{manifest.json, shard.onnx, shard.ir, weights.safetensors}
//! ```
//!
//! Everything is written into a temporary folder beside `OUT` and renamed into place
//! at the end, so a failed or interrupted compile leaves no partial `OUT`. Weights
//! stream from the memory-mapped model in bounded chunks.

pub mod onnx;
pub mod output;
pub mod svg;
pub mod weights;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use shardc_format::manifest::{hash_file, Manifest, Port, Standby, FORMAT};
use shardc_ir::{DType, Graph, Op, TensorType, ValueDef, ValueId, WeightLocation};
use shardc_passes::devices::Profile;
use shardc_passes::plan::Strategy;
use shardc_passes::segment::Segmentation;
use shardc_passes::split::{split, units_graph};
use shardc_passes::transmission;
use shardc_runtime::balance::{self, BalanceSpec, Crossing};

use crate::planning::{self, PlanError, PlanReport, Request};

/// Why a compile failed.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    #[error("weight `{name}` {message}")]
    Weight { name: String, message: String },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{0}")]
    Other(String),
}

/// What to compile.
pub struct CompileOptions {
    pub strategy: Strategy,
    pub request: Request,
    /// Store float weights as this dtype (default: as in the model).
    pub dtype: Option<DType>,
    /// Replace an existing output folder.
    pub force: bool,
    /// Names for plan.json.
    pub model_name: String,
    pub devices_name: String,
    /// Files and folders the compile reads (model, device profile): the output may not
    /// be, contain or lie inside any of them. The weight files the graph refers to are
    /// added to these.
    pub inputs: Vec<PathBuf>,
}

/// What a compile wrote.
pub struct Summary {
    pub report: PlanReport,
    pub weight_bytes: u64,
}

/// Store every float weight as `dtype`. Consumers that are casts read the new dtype
/// directly; others get a cast back to the dtype they were built for. Returns the new
/// graph and, per weight value, its source dtype and location.
fn store_weights(graph: &Graph, dtype: Option<DType>) -> (Graph, HashMap<usize, (DType, WeightLocation)>) {
    let mut stored = HashMap::new();
    let mut out = Graph::new(graph.name.clone());
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    let mut recast: Vec<(ValueId, DType)> = Vec::new();
    let uses = graph.uses();
    for (i, v) in graph.values.iter().enumerate() {
        let id = ValueId(i as u32);
        match &v.def {
            ValueDef::Input => {
                map.insert(
                    id,
                    out.add_input(v.name.clone(), v.ty.clone().unwrap_or_else(|| TensorType::new(DType::F32, vec![]))),
                );
            }
            ValueDef::Weight(w) => {
                let target = dtype.filter(|_| w.dtype.is_ieee_float()).unwrap_or(w.dtype);
                let mut nw = w.clone();
                nw.dtype = target;
                nw.location = None;
                let new =
                    out.add_value(v.name.clone(), Some(TensorType::known(target, &w.shape)), ValueDef::Weight(nw));
                if let Some(loc) = &w.location {
                    stored.insert(new.index(), (w.dtype, loc.clone()));
                }
                map.insert(id, new);
                let only_casts = uses[i].iter().all(|n| matches!(graph.node(*n).op, Op::Cast(_)));
                if target != w.dtype && !only_casts {
                    recast.push((id, w.dtype));
                }
            }
            ValueDef::Const(_) => {
                map.insert(id, out.add_value(v.name.clone(), v.ty.clone(), v.def.clone()));
            }
            ValueDef::Node(_) => {}
        }
    }
    // Casts back to the dtype the graph computes with, ahead of every node.
    for (w, original) in recast {
        let name = format!("{}:stored_as", graph.value(w).name);
        let cast = Op::Cast(shardc_ir::ops::Cast { to: original, saturate: 1, round_mode: "up".into() });
        let nid =
            out.add_node(name.clone(), cast, vec![Some(map[&w])], &[format!("{}:as_{original}", graph.value(w).name)]);
        let o = out.node(nid).outputs[0];
        out.value_mut(o).ty = graph.value(w).ty.clone();
        map.insert(w, o);
    }
    for node in &graph.nodes {
        let inputs = node
            .inputs
            .iter()
            .map(|v| {
                v.map(|v| {
                    // Casts read the stored weight itself.
                    if matches!(node.op, Op::Cast(_)) && matches!(graph.value(v).def, ValueDef::Weight(_)) {
                        out.value_by_name(&graph.value(v).name).unwrap_or(map[&v])
                    } else {
                        map[&v]
                    }
                })
            })
            .collect();
        map.extend(out.append_copy(graph, node, inputs));
    }
    out.outputs = graph.outputs.iter().map(|v| map[v]).collect();
    out.cache = graph
        .cache
        .iter()
        .map(|c| shardc_ir::CachePair { past: map[&c.past], present: map[&c.present], axis: c.axis })
        .collect();
    out.recompute_beyond = graph.recompute_beyond;
    out.max_context = graph.max_context;
    (out, stored)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), EmitError> {
    std::fs::write(path, bytes).map_err(|e| EmitError::Io { path: path.to_path_buf(), message: e.to_string() })
}

fn json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, EmitError> {
    serde_json::to_string_pretty(v).map(|s| (s + "\n").into_bytes()).map_err(|e| EmitError::Other(e.to_string()))
}

/// Compile `graph` (after the pass pipeline; weights relative to `source`) into `out`.
pub fn compile(
    graph: &Graph,
    source: &Path,
    profile: &Profile,
    opts: &CompileOptions,
    out: &Path,
) -> Result<Summary, EmitError> {
    let mut inputs = opts.inputs.clone();
    let mut files: Vec<&str> = graph
        .values
        .iter()
        .filter_map(|v| match &v.def {
            ValueDef::Weight(w) => w.location.as_ref().map(|l| l.file.as_str()),
            _ => None,
        })
        .collect();
    files.sort_unstable();
    files.dedup();
    inputs.extend(files.iter().map(|f| source.join(f)));
    output::check_not_input(out, &inputs).map_err(EmitError::Other)?;
    if std::fs::symlink_metadata(out).is_ok() {
        if !opts.force {
            return Err(EmitError::Other(format!("{}: exists; pass --force to replace it", out.display())));
        }
        output::check_replaceable(out).map_err(EmitError::Other)?;
    }
    let req = &opts.request;
    // Plan with the weights sized as they will be stored.
    let mut sized = graph.clone();
    if let Some(d) = opts.dtype {
        planning::retype_weights(&mut sized, d);
    }
    let planned = planning::plan_with(&sized, profile, req, opts.strategy, (&opts.model_name, &opts.devices_name))?;
    let plan = planned.outcome.plan.clone().unwrap_or_default();
    let (report, map) = (planned.report, planned.map);
    let names: Vec<String> = profile.devices.iter().map(|d| d.name.clone()).collect();
    let seg = &planned.prep.seg;
    let stages = split(graph, seg, &plan);
    // The held units as planning reported them (every stage has them with --standby).
    let held: Option<Vec<[usize; 2]>> = report.stages.iter().map(|s| s.held.as_ref().map(|h| h.units)).collect();
    let (held, spec) = if let Some(held) = held {
        let problem = &planned.prep.model.problem;
        let spec = BalanceSpec {
            format: balance::FORMAT,
            units: seg.units.iter().map(|u| u.name.clone()).collect(),
            devices: names.clone(),
            plan: plan.clone(),
            held: held.clone(),
            problem: problem.clone(),
            crossings: crossings(graph, seg, &map),
        };
        spec.check().map_err(|e| EmitError::Other(format!("balance.json: {e}")))?;
        (Some(held.iter().map(|h| held_graph(graph, seg, h[0]..h[1])).collect::<Vec<_>>()), Some(spec))
    } else {
        (None, None)
    };

    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(|e| EmitError::Io { path: parent.to_path_buf(), message: e.to_string() })?;
    let base = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    // Leftovers of compiles of this OUT that were killed mid-write (never a finished OUT).
    if let Ok(entries) = std::fs::read_dir(parent) {
        for e in entries.flatten() {
            if output::is_own_temporary(&e.file_name().to_string_lossy(), &base) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let tmp = parent.join(format!(".{base}.partial-{}", std::process::id()));
    // The output's files the runtime reads, hashed into every manifest.
    let mut shared = vec![("transmission_map.json".to_string(), json(&map)?)];
    if let Some(spec) = &spec {
        shared.push(("balance.json".to_string(), json(spec)?));
    }
    let result = write_all(&tmp, source, &stages, held.as_deref(), &plan, &names, &report, &shared, opts);
    match result {
        Ok(weight_bytes) => {
            let old = parent.join(format!(".{base}.old-{}", std::process::id()));
            if std::fs::symlink_metadata(out).is_ok() {
                std::fs::rename(out, &old)
                    .map_err(|e| EmitError::Io { path: out.to_path_buf(), message: e.to_string() })?;
            }
            if let Err(e) = std::fs::rename(&tmp, out) {
                // Put the previous output back rather than lose it.
                let _ = std::fs::rename(&old, out);
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(EmitError::Io { path: out.to_path_buf(), message: e.to_string() });
            }
            let _ = std::fs::remove_dir_all(&old);
            Ok(Summary { report, weight_bytes })
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            // Name the folder the user gave, not the temporary one.
            Err(match e {
                EmitError::Io { path, message } => EmitError::Io { path: output::shown(&path, &tmp, out), message },
                other => other,
            })
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn write_all(
    tmp: &Path,
    source: &Path,
    stages: &[Graph],
    held: Option<&[Held]>,
    plan: &[shardc_passes::plan::Stage],
    names: &[String],
    report: &PlanReport,
    shared: &[(String, Vec<u8>)],
    opts: &CompileOptions,
) -> Result<u64, EmitError> {
    let map = &report_map(shared)?;
    let shared_hashes: std::collections::BTreeMap<String, String> =
        shared.iter().map(|(name, bytes)| (name.clone(), blake3::hash(bytes).to_hex().to_string())).collect();
    let mkdir = |p: &Path| {
        std::fs::create_dir_all(p).map_err(|e| EmitError::Io { path: p.to_path_buf(), message: e.to_string() })
    };
    mkdir(tmp)?;
    let prepared: Vec<_> = stages.iter().map(|s| store_weights(s, opts.dtype)).collect();
    // With standby units, the held graph's weights (a superset) are what is written.
    let prepared_held: Option<Vec<_>> = held.map(|h| h.iter().map(|h| store_weights(&h.graph, opts.dtype)).collect());
    let total: u64 = match &prepared_held {
        Some(p) => p.iter().flat_map(|(_, st)| st.values().map(|(_, l)| l.length)).sum(),
        None => prepared.iter().flat_map(|(_, st)| st.values().map(|(_, l)| l.length)).sum(),
    };
    let mut prepared_held = prepared_held.map(|p| p.into_iter());
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg:>14} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut written = 0u64;
    for (s, (stage, stored)) in prepared.into_iter().enumerate() {
        let device = &names[plan[s].device];
        bar.set_message(device.clone());
        let dir = tmp.join(device);
        mkdir(&dir)?;
        let mut stage = stage;
        let mut files = std::collections::BTreeMap::new();
        let mut held_units = None;
        // With standby units, the held graph's weights (a superset) are what is written;
        // the stage's weights point into the same file.
        let standby = prepared_held.as_mut().and_then(Iterator::next);
        let (written_graph, written_stored) = match &standby {
            Some((g, st)) => (g, st),
            None => (&stage, &stored),
        };
        let written_weights =
            weights::write(written_graph, written_stored, source, &dir.join("weights.safetensors"), &|n| bar.inc(n))?;
        let locations: HashMap<String, WeightLocation> = written_weights
            .locations
            .iter()
            .map(|(i, loc)| (written_graph.values[*i].name.clone(), loc.clone()))
            .collect();
        place_weights(&mut stage, &locations);
        if let (Some((mut standby, _)), Some(h)) = (standby, held.map(|h| &h[s])) {
            place_weights(&mut standby, &locations);
            shardc_ir::verify(&standby)
                .map_err(|e| EmitError::Other(format!("stage {s} ({device}) standby units: {e}")))?;
            write_file(&dir.join("standby.ir"), shardc_ir::text::print(&standby).as_bytes())?;
            // Casts of stored weights come first in the stored graph; their unit is moot.
            let extra = standby.nodes.len() - h.graph.nodes.len();
            let node_units = std::iter::repeat_n(0, extra).chain(h.node_units.iter().copied()).collect();
            let standby_json = Standby { first: h.units.start, units: h.names.clone(), node_units };
            let text = serde_json::to_string(&standby_json).map_err(|e| EmitError::Other(e.to_string()))? + "\n";
            write_file(&dir.join("standby.json"), text.as_bytes())?;
            for f in ["standby.ir", "standby.json"] {
                let p = dir.join(f);
                files.insert(
                    f.to_string(),
                    hash_file(&p).map_err(|e| EmitError::Io { path: p.clone(), message: e.to_string() })?,
                );
            }
            held_units = Some([h.names[0].clone(), h.names[h.names.len() - 1].clone()]);
        }
        written += written_weights.locations.values().map(|l| l.length).sum::<u64>();
        shardc_ir::verify(&stage).map_err(|e| EmitError::Other(format!("stage {s} ({device}): {e}")))?;
        write_file(&dir.join("shard.ir"), shardc_ir::text::print(&stage).as_bytes())?;
        write_file(&dir.join("shard.onnx"), &onnx::to_onnx(&stage)?)?;
        let port = |v: ValueId, peers: Vec<String>| {
            let value = stage.value(v);
            Port {
                name: value.name.clone(),
                dtype: value.ty.as_ref().map_or("?".into(), |t| t.dtype.to_string()),
                shape: value
                    .ty
                    .as_ref()
                    .map_or("?".into(), |t| format!("[{}]", shardc_ir::text::print::dims_text(&t.shape))),
                peers,
            }
        };
        let local = map.device_local.get(device).cloned().unwrap_or_default();
        let senders =
            |name: &str| map.transfers.iter().filter(|t| t.tensor == name).map(|t| t.from.clone()).collect::<Vec<_>>();
        let receivers = |name: &str| {
            map.transfers.iter().filter(|t| t.tensor == name).flat_map(|t| t.to.clone()).collect::<Vec<_>>()
        };
        let inputs = stage
            .inputs
            .iter()
            .filter(|&&v| !local.contains(&stage.value(v).name))
            .map(|&v| port(v, senders(&stage.value(v).name)))
            .collect();
        let outputs = stage
            .outputs
            .iter()
            .filter(|&&v| !local.contains(&stage.value(v).name))
            .map(|&v| port(v, receivers(&stage.value(v).name)))
            .collect();
        files.insert("weights.safetensors".to_string(), written_weights.hash.clone());
        for f in ["shard.ir", "shard.onnx"] {
            let p = dir.join(f);
            files.insert(
                f.to_string(),
                hash_file(&p).map_err(|e| EmitError::Io { path: p.clone(), message: e.to_string() })?,
            );
        }
        let weights_dtype = stage
            .values
            .iter()
            .find_map(|v| match &v.def {
                ValueDef::Weight(w) if w.dtype.is_float() => Some(w.dtype.to_string()),
                _ => None,
            })
            .unwrap_or_else(|| "none".into());
        let manifest = Manifest {
            format: FORMAT,
            device: device.clone(),
            stage: s,
            stages: plan.len(),
            units: [report.stages[s].first_unit.clone(), report.stages[s].last_unit.clone()],
            inputs,
            outputs,
            device_local: local,
            weights_dtype,
            files,
            shared: shared_hashes.clone(),
            held: held_units,
        };
        write_file(&dir.join("manifest.json"), &json(&manifest)?)?;
    }
    bar.finish_and_clear();
    write_file(&tmp.join("plan.json"), &json(report)?)?;
    for (name, bytes) in shared {
        write_file(&tmp.join(name), bytes)?;
    }
    write_file(&tmp.join("report.svg"), svg::render(report).as_bytes())?;
    Ok(written)
}

/// The transmission map among the shared files (as written).
fn report_map(shared: &[(String, Vec<u8>)]) -> Result<transmission::TransmissionMap, EmitError> {
    let bytes = shared
        .iter()
        .find(|(n, _)| n == "transmission_map.json")
        .map(|(_, b)| b)
        .ok_or_else(|| EmitError::Other("no transmission map".into()))?;
    serde_json::from_slice(bytes).map_err(|e| EmitError::Other(format!("transmission map: {e}")))
}

/// Point every weight of `graph` at where it was written.
fn place_weights(graph: &mut Graph, locations: &HashMap<String, WeightLocation>) {
    for v in &mut graph.values {
        if let ValueDef::Weight(w) = &mut v.def {
            w.location = locations.get(&v.name).cloned();
        }
    }
}

/// The units a stage holds (its own and its standby units): their graph, and the held
/// unit of each of its nodes.
pub struct Held {
    pub units: std::ops::Range<usize>,
    pub names: Vec<String>,
    pub graph: Graph,
    pub node_units: Vec<usize>,
}

fn held_graph(graph: &Graph, seg: &Segmentation, units: std::ops::Range<usize>) -> Held {
    let (sub, members) = units_graph(graph, &seg.unit_of, units.clone());
    // Load-time nodes may belong to a unit outside (their first reader's); any held
    // unit does, since they run wherever they are needed.
    let last = units.end - units.start - 1;
    let node_units = members.iter().map(|&i| seg.unit_of[i].saturating_sub(units.start).min(last)).collect();
    let names = seg.units[units.clone()].iter().map(|u| u.name.clone()).collect();
    Held { units, names, graph: sub, node_units }
}

/// Every tensor that crosses units, with the units that make and read it: what the
/// runtime routes by when boundaries move. KV-cache tensors stay on their device.
fn crossings(graph: &Graph, seg: &Segmentation, map: &transmission::TransmissionMap) -> Vec<Crossing> {
    let local: std::collections::BTreeSet<&String> = map.device_local.values().flatten().collect();
    let constant_node = graph.constants().node;
    let uses = graph.uses();
    let mut out = Vec::new();
    for &v in &graph.inputs {
        let name = &graph.value(v).name;
        if local.contains(name) {
            continue;
        }
        let mut to: Vec<usize> =
            uses[v.index()].iter().filter(|n| !constant_node[n.index()]).map(|n| seg.unit_of[n.index()]).collect();
        to.sort_unstable();
        to.dedup();
        out.push(Crossing { tensor: name.clone(), from: None, to, output: false });
    }
    let mut crossing_values = std::collections::BTreeSet::new();
    for c in &seg.crossings {
        crossing_values.insert(c.value);
        let name = graph.value(c.value).name.clone();
        out.push(Crossing { tensor: name, from: Some(c.producer), to: c.consumers.clone(), output: c.output });
    }
    for &v in &graph.outputs {
        let name = &graph.value(v).name;
        if local.contains(name) || crossing_values.contains(&v) {
            continue;
        }
        if let ValueDef::Node(n) = graph.value(v).def {
            out.push(Crossing { tensor: name.clone(), from: Some(seg.unit_of[n.index()]), to: vec![], output: true });
        }
    }
    out
}
