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

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use shardc_format::manifest::{Manifest, FORMAT};
use shardc_format::plan::{InputFile, PlanReport};
use shardc_ir::{Graph, ValueDef, WeightLocation};
use shardc_passes::devices::Profile;
use shardc_passes::partition::{self, Names, Partition, PartitionError, Request};
use shardc_passes::plan::Strategy;

/// Why a compile failed.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    #[error("weight `{name}` {message}")]
    Weight { name: String, message: String },
    #[error(transparent)]
    Plan(#[from] PartitionError),
    #[error("{0}")]
    Other(String),
}

/// What to compile.
pub struct CompileOptions {
    pub strategy: Strategy,
    /// The request, `--dtype` included (weights are stored as it says).
    pub request: Request,
    /// Replace an existing output folder.
    pub force: bool,
    /// Names for plan.json (from the inputs' content, never their paths).
    pub model_name: String,
    pub devices_name: String,
    /// Every file read, by content, for plan.json.
    pub records: Vec<InputFile>,
    /// Show a progress bar on stderr (when it is a terminal).
    pub progress: bool,
    /// Files and folders the compile reads (model, device profile): the output may not
    /// be, contain or lie inside any of them. The weight files the graph refers to are
    /// added to these.
    pub inputs: Vec<PathBuf>,
}

/// What a compile wrote.
pub struct Summary {
    pub report: PlanReport,
    pub weight_bytes: u64,
    /// Every file written, by path relative to `OUT` (`/`-separated), sorted.
    pub files: Vec<WrittenFile>,
}

/// One file a compile wrote.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WrittenFile {
    pub path: String,
    pub bytes: u64,
    pub blake3: String,
}

/// Files written so far under the temporary output folder, with their hashes.
struct Writer<'a> {
    root: &'a Path,
    files: Vec<WrittenFile>,
}

impl Writer<'_> {
    /// Write `bytes` at `rel` (relative to the output, `/`-separated).
    fn put(&mut self, rel: &str, bytes: &[u8]) -> Result<String, EmitError> {
        let path = self.root.join(rel);
        std::fs::write(&path, bytes).map_err(|e| EmitError::Io { path: path.clone(), message: e.to_string() })?;
        let hash = blake3::hash(bytes).to_hex().to_string();
        self.files.push(WrittenFile { path: rel.to_string(), bytes: bytes.len() as u64, blake3: hash.clone() });
        Ok(hash)
    }

    /// Record a file written by other means, with its hash.
    fn record(&mut self, rel: &str, blake3: &str) -> Result<(), EmitError> {
        let path = self.root.join(rel);
        let bytes = std::fs::metadata(&path).map_err(|e| EmitError::Io { path, message: e.to_string() })?.len();
        self.files.push(WrittenFile { path: rel.to_string(), bytes, blake3: blake3.to_string() });
        Ok(())
    }
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
    let names = Names { model: &opts.model_name, devices: &opts.devices_name, inputs: &opts.records };
    let partition = partition::partition(graph, profile, &opts.request, opts.strategy, names)?;

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
    let mut shared = vec![("transmission_map.json".to_string(), json(&partition.map)?)];
    if let Some(spec) = &partition.balance {
        shared.push(("balance.json".to_string(), json(spec)?));
    }
    let result = write_all(&tmp, source, &partition, &shared, opts.progress);
    match result {
        Ok((weight_bytes, mut files)) => {
            files.sort_by(|a, b| a.path.cmp(&b.path));
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
            Ok(Summary { report: partition.report, weight_bytes, files })
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

fn write_all(
    tmp: &Path,
    source: &Path,
    partition: &Partition,
    shared: &[(String, Vec<u8>)],
    progress: bool,
) -> Result<(u64, Vec<WrittenFile>), EmitError> {
    let shared_hashes: BTreeMap<String, String> =
        shared.iter().map(|(name, bytes)| (name.clone(), blake3::hash(bytes).to_hex().to_string())).collect();
    let mkdir = |p: &Path| {
        std::fs::create_dir_all(p).map_err(|e| EmitError::Io { path: p.to_path_buf(), message: e.to_string() })
    };
    mkdir(tmp)?;
    let mut out = Writer { root: tmp, files: Vec::new() };
    let total: u64 = partition.stages.iter().flat_map(|p| p.held().sources.values().map(|(_, l)| l.length)).sum();
    let bar = if progress && std::io::stderr().is_terminal() {
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
    for (s, part) in partition.stages.iter().enumerate() {
        let device = &part.device;
        bar.set_message(device.clone());
        let dir = tmp.join(device);
        mkdir(&dir)?;
        let mut files = BTreeMap::new();
        // With standby units the held graph's weights (a superset) are what is written;
        // the stage's weights point into the same file.
        let stored = part.held();
        let written_weights = weights::write(
            &stored.graph,
            &stored.sources,
            &stored.derived,
            source,
            &dir.join("weights.safetensors"),
            &|n| bar.inc(n),
        )?;
        out.record(&format!("{device}/weights.safetensors"), &written_weights.hash)?;
        let locations: HashMap<String, WeightLocation> = written_weights
            .locations
            .iter()
            .map(|(i, loc)| (stored.graph.values[*i].name.clone(), loc.clone()))
            .collect();
        let mut held_units = None;
        if let Some(standby) = &part.standby {
            let mut graph = standby.graph.graph.clone();
            place_weights(&mut graph, &locations);
            shardc_ir::verify(&graph)
                .map_err(|e| EmitError::Other(format!("stage {s} ({device}) standby units: {e}")))?;
            let hash = out.put(&format!("{device}/standby.ir"), shardc_ir::text::print(&graph).as_bytes())?;
            files.insert("standby.ir".to_string(), hash);
            let text = serde_json::to_string(&standby.map).map_err(|e| EmitError::Other(e.to_string()))? + "\n";
            files.insert("standby.json".to_string(), out.put(&format!("{device}/standby.json"), text.as_bytes())?);
            let names = &standby.map.units;
            held_units = Some([names[0].clone(), names[names.len() - 1].clone()]);
        }
        written += written_weights.locations.values().map(|l| l.length).sum::<u64>();
        let mut stage = part.graph.graph.clone();
        place_weights(&mut stage, &locations);
        shardc_ir::verify(&stage).map_err(|e| EmitError::Other(format!("stage {s} ({device}): {e}")))?;
        let hash = out.put(&format!("{device}/shard.ir"), shardc_ir::text::print(&stage).as_bytes())?;
        files.insert("shard.ir".to_string(), hash);
        files.insert("shard.onnx".to_string(), out.put(&format!("{device}/shard.onnx"), &onnx::to_onnx(&stage)?)?);
        files.insert("weights.safetensors".to_string(), written_weights.hash.clone());
        let manifest = Manifest {
            format: FORMAT,
            device: device.clone(),
            stage: s,
            stages: partition.stages.len(),
            units: part.units.clone(),
            inputs: part.inputs.clone(),
            outputs: part.outputs.clone(),
            device_local: part.device_local.clone(),
            weights_dtype: part.weights_dtype,
            files,
            shared: shared_hashes.clone(),
            held: held_units,
        };
        out.put(&format!("{device}/manifest.json"), &json(&manifest)?)?;
    }
    bar.finish_and_clear();
    out.put("plan.json", &json(&partition.report)?)?;
    for (name, bytes) in shared {
        out.put(name, bytes)?;
    }
    out.put("report.svg", svg::render(&partition.report, &partition.map, None).as_bytes())?;
    Ok((written, out.files))
}

/// Point every weight of `graph` at where it was written.
fn place_weights(graph: &mut Graph, locations: &HashMap<String, WeightLocation>) {
    for v in &mut graph.values {
        if let ValueDef::Weight(w) = &mut v.def {
            w.location = locations.get(&v.name).cloned();
        }
    }
}
