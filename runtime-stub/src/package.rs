//! Shard packages: one folder per device with `manifest.json`, `shard.ir`,
//! `shard.onnx` and `weights.safetensors`. Loading checks every file against the
//! blake3 hash the manifest records and refuses a package that was altered. The whole
//! output (map and every manifest, checked together) is [`crate::output`]'s.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use shardc_ir::Graph;

use crate::pipeline::Pipeline;
use crate::weights::WeightFiles;
use crate::{RuntimeError, Session};
use shardc_format::manifest::{hash_file, Manifest, Standby, FORMAT};
use shardc_format::names::is_plain_name;
use shardc_passes::plan::UnitId;
use shardc_passes::split::units_graph;

/// The units the package holds, when it was compiled with standby units.
pub fn load_standby(dir: &Path, m: &Manifest) -> Result<Option<HeldUnits>, RuntimeError> {
    if m.held.is_none() {
        return Ok(None);
    }
    let read = |f: &str| read_listed(dir, m, f);
    let path = dir.join("standby.json");
    let standby: Standby =
        serde_json::from_str(&read("standby.json")?).map_err(|e| err(&path, format!("not a standby file: {e}")))?;
    let ir = dir.join("standby.ir");
    let graph = shardc_ir::text::parse(&read("standby.ir")?).map_err(|e| err(&ir, e.to_string()))?;
    shardc_ir::verify(&graph).map_err(|e| err(&ir, e.to_string()))?;
    if standby.node_units.len() != graph.nodes.len() || standby.node_units.iter().any(|&u| u >= standby.units.len()) {
        return Err(err(
            &path,
            format!(
                "gives units for {} nodes (of {} held units), standby.ir has {} nodes",
                standby.node_units.len(),
                standby.units.len(),
                graph.nodes.len()
            ),
        ));
    }
    Ok(Some(HeldUnits::new(standby, graph)))
}

pub(crate) fn err(path: &Path, message: String) -> RuntimeError {
    RuntimeError::Package { path: path.to_path_buf(), message }
}

/// Largest `manifest.json`, `shard.ir`, `standby.ir` or `standby.json` read.
pub const MAX_PACKAGE_TEXT: u64 = 256 << 20;

/// What a hash recorded in a manifest and its file disagreeing means: for a package's
/// own file, and for a file of the output every manifest records.
const ALTERED_PACKAGE: (&str, &str) = ("the manifest's", "the package was altered");
pub(crate) const ALTERED_SHARED: (&str, &str) = ("the packages'", "it was altered or comes from another compile");

pub(crate) fn mismatch(path: &Path, got: &str, expected: &str, (whose, why): (&str, &str)) -> RuntimeError {
    err(path, format!("blake3 {got} does not match {whose} {expected}: {why}"))
}

/// At most [`MAX_PACKAGE_TEXT`] bytes of `path`, which must hash to `expected` (the
/// bytes hashed are the bytes returned).
pub(crate) fn read_hashed(path: &Path, expected: &str, meaning: (&str, &str)) -> Result<Vec<u8>, RuntimeError> {
    let bytes = shardc_format::files::read_bounded(path, MAX_PACKAGE_TEXT)
        .map_err(|e| err(path, format!("cannot read: {e}")))?;
    let got = blake3::hash(&bytes).to_hex();
    if got.as_str() != expected {
        return Err(mismatch(path, got.as_str(), expected, meaning));
    }
    Ok(bytes)
}

/// Read a listed text file of a package and check it against the manifest's hash (the
/// bytes hashed are the bytes returned).
pub fn read_listed(dir: &Path, m: &Manifest, file: &str) -> Result<String, RuntimeError> {
    let path = dir.join(file);
    let expected = m.files.get(file).ok_or_else(|| err(&path, "the manifest does not list this file".into()))?;
    let bytes = read_hashed(&path, expected, ALTERED_PACKAGE)?;
    String::from_utf8(bytes).map_err(|e| err(&path, format!("not UTF-8 text: {e}")))
}

/// Read a package's manifest and check its shape: the device is the folder's name,
/// every file it lists is a plain name that exists, and the folder holds nothing else.
/// Hashes are checked when files are read ([`read_listed`], [`WeightFiles::package`]),
/// or all at once by [`load_manifest`].
pub fn read_manifest(dir: &Path) -> Result<Manifest, RuntimeError> {
    let path = dir.join("manifest.json");
    let text = shardc_format::files::read_bounded(&path, MAX_PACKAGE_TEXT)
        .map_err(|e| err(&path, format!("cannot read: {e}")))?;
    if let Some(format) = shardc_format::format_of(&text).filter(|f| *f != FORMAT) {
        return Err(err(&path, format!("package format {format} (this runtime reads {FORMAT})")));
    }
    let m: Manifest = serde_json::from_slice(&text).map_err(|e| err(&path, format!("not a manifest: {e}")))?;
    shardc_passes::devices::check_name(&m.device).map_err(|e| err(&path, e))?;
    let folder = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if m.device != folder {
        return Err(err(&path, format!("is the manifest of device `{}`, but its folder is `{folder}`", m.device)));
    }
    if m.stage >= m.stages {
        return Err(err(&path, format!("stage {} of {} stages", m.stage, m.stages)));
    }
    for (file, hash) in &m.files {
        if !is_plain_name(file) || file == "manifest.json" {
            return Err(err(&path, format!("lists `{file}`, which is not a plain file name in the package")));
        }
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err(&path, format!("the hash of `{file}` is not a blake3 hash")));
        }
    }
    for needed in ["shard.ir", "weights.safetensors"] {
        if !m.files.contains_key(needed) {
            return Err(err(&path, format!("does not list `{needed}`")));
        }
    }
    let entries = std::fs::read_dir(dir).map_err(|e| err(dir, format!("cannot read: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| err(dir, format!("cannot read: {e}")))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "manifest.json" && !m.files.contains_key(&name) {
            return Err(err(
                &entry.path(),
                "is not listed (with its hash) in the package's manifest: a package holds only the files it lists"
                    .into(),
            ));
        }
        // Every file is a regular file in the folder, not a link to somewhere else.
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            return Err(err(&entry.path(), "is not a regular file (a package holds no links or folders)".into()));
        }
    }
    Ok(m)
}

/// Read a package's manifest and check every file's hash.
pub fn load_manifest(dir: &Path) -> Result<Manifest, RuntimeError> {
    let m = read_manifest(dir)?;
    for (file, expected) in &m.files {
        let f = dir.join(file);
        let got = hash_file(&f).map_err(|e| err(&f, format!("cannot read: {e}")))?;
        if &got != expected {
            return Err(mismatch(&f, &got, expected, ALTERED_PACKAGE));
        }
    }
    Ok(m)
}

/// Load one package: manifest and its graph (`shard.ir`), hash-checked.
pub fn load(dir: &Path) -> Result<(Manifest, Graph), RuntimeError> {
    let m = read_manifest(dir)?;
    let path = dir.join("shard.ir");
    let text = read_listed(dir, &m, "shard.ir")?;
    let graph = shardc_ir::text::parse(&text).map_err(|e| err(&path, e.to_string()))?;
    shardc_ir::verify(&graph).map_err(|e| err(&path, e.to_string()))?;
    Ok((m, graph))
}

/// The package's weight files: only listed files, hash-checked; every file `graphs`
/// refer to is mapped (and checked) now, so a bad package fails at start, not mid-run.
pub fn weights(dir: &Path, m: &Manifest, graphs: &[&Graph]) -> Result<WeightFiles, RuntimeError> {
    let files = WeightFiles::package(dir, m.files.clone());
    for g in graphs {
        for v in &g.values {
            if let shardc_ir::ValueDef::Weight(w) = &v.def {
                let Some(loc) = &w.location else {
                    return Err(RuntimeError::NoWeightFile { name: v.name.clone() });
                };
                files.map(&loc.file).map_err(|message| RuntimeError::Weight {
                    name: v.name.clone(),
                    file: dir.join(&loc.file),
                    message,
                })?;
            }
        }
    }
    Ok(files)
}

/// Load every package of a compile output folder, in pipeline order, as a pipeline
/// of sessions in this process.
pub fn load_pipeline(out: &Path) -> Result<(Vec<Manifest>, Pipeline), RuntimeError> {
    let mut packages: Vec<(Manifest, Graph, PathBuf)> = Vec::new();
    let entries = std::fs::read_dir(out).map_err(|e| err(out, format!("cannot read: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| err(out, e.to_string()))?;
        let dir = entry.path();
        if dir.join("manifest.json").is_file() {
            let (m, g) = load(&dir)?;
            packages.push((m, g, dir));
        }
    }
    check_stages(out, packages.iter().map(|(m, _, _)| m))?;
    if packages.is_empty() {
        return Err(err(out, "no packages (folders with manifest.json)".into()));
    }
    packages.sort_by_key(|(m, _, _)| m.stage);
    let mut manifests = Vec::new();
    let mut sessions = Vec::new();
    for (m, g, dir) in packages {
        let files = weights(&dir, &m, &[&g])?;
        sessions.push(Session::with_weights(g, files));
        manifests.push(m);
    }
    Ok((manifests, Pipeline::new(sessions)))
}

/// The units a package holds: the graph any stage within them is cut from.
pub struct HeldUnits {
    pub standby: Standby,
    pub graph: Graph,
    /// The unit (whole-model index) that reads each KV-cache input.
    pub cache_unit: HashMap<String, usize>,
}

impl HeldUnits {
    pub fn new(standby: Standby, graph: Graph) -> HeldUnits {
        let uses = graph.uses();
        let cache_unit = graph
            .inputs
            .iter()
            .filter(|&&v| graph.cache_of_input(v).is_some())
            .filter_map(|&v| {
                let unit = uses[v.index()].iter().map(|n| standby.node_units[n.index()]).min()?;
                Some((graph.value(v).name.clone(), standby.first + unit))
            })
            .collect();
        HeldUnits { standby, graph, cache_unit }
    }

    /// Units `[start, end)` held.
    pub fn range(&self) -> [usize; 2] {
        [self.standby.first, self.standby.first + self.standby.units.len()]
    }

    /// The graph of units `[start, end)`, which must be held.
    pub fn stage(&self, range: [usize; 2]) -> Result<Graph, String> {
        let [h0, h1] = self.range();
        if range[0] < h0 || range[1] > h1 || range[0] >= range[1] {
            return Err(format!(
                "asked to run units {}..{}, but the package holds units {h0}..{h1} ({} .. {})",
                range[0],
                range[1],
                self.standby.units[0],
                self.standby.units[self.standby.units.len() - 1]
            ));
        }
        // standby.json counts units from the first held one.
        let node_units: Vec<UnitId> = self.standby.node_units.iter().map(|&u| UnitId(h0 + u)).collect();
        let (mut g, _) = units_graph(&self.graph, &node_units, range[0]..range[1]);
        g.name = format!("units{}-{}", range[0], range[1]);
        Ok(g)
    }
}

pub use crate::output::{check_stages, load_output, Output};
