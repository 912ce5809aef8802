//! Shard packages: one folder per device with `manifest.json`, `shard.ir`,
//! `shard.onnx` and `weights.safetensors`. Loading checks every file against the
//! blake3 hash the manifest records and refuses a package that was altered.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shardc_ir::Graph;

use crate::pipeline::Pipeline;
use crate::{RuntimeError, Session};
use shardc_passes::split::units_graph;

/// A tensor a stage takes in or gives out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Port {
    pub name: String,
    pub dtype: String,
    pub shape: String,
    /// Who sends it (`client` or a device) / who receives it.
    pub peers: Vec<String>,
}

/// `manifest.json` of a package.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub device: String,
    /// Position in the pipeline.
    pub stage: usize,
    pub stages: usize,
    /// First and last unit.
    pub units: [String; 2],
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
    /// KV-cache inputs and outputs that stay on this device.
    pub device_local: Vec<String>,
    /// Weights dtype as stored.
    pub weights_dtype: String,
    /// blake3 of every other file of the package.
    pub files: BTreeMap<String, String>,
    /// First and last unit whose weights the package holds, when compiled with standby
    /// units (`standby.ir` and `standby.json` then describe them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<[String; 2]>,
}

/// `standby.json`: the units of `standby.ir`, the graph of every unit the package
/// holds, from which the runtime cuts the stage of any plan the standby units allow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Standby {
    /// Index (in the whole model) of the first held unit.
    pub first: usize,
    /// Names of the held units.
    pub units: Vec<String>,
    /// Held unit (index into `units`) of each node of `standby.ir`, in node order.
    pub node_units: Vec<usize>,
}

/// The units the package holds, when it was compiled with standby units.
pub fn load_standby(dir: &Path, m: &Manifest) -> Result<Option<HeldUnits>, RuntimeError> {
    if m.held.is_none() {
        return Ok(None);
    }
    let read = |f: &str| {
        let path = dir.join(f);
        if !m.files.contains_key(f) {
            return Err(err(&path, "the manifest holds units on standby but does not list this file".into()));
        }
        std::fs::read_to_string(&path).map_err(|e| err(&path, format!("cannot read: {e}")))
    };
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

/// The current package format.
pub const FORMAT: u32 = 1;

/// blake3 of a file, hex.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    let mut f = std::fs::File::open(path)?;
    std::io::copy(&mut f, &mut hasher)?;
    Ok(hasher.finalize().to_hex().to_string())
}

fn err(path: &Path, message: String) -> RuntimeError {
    RuntimeError::Package { path: path.to_path_buf(), message }
}

/// Read a package's manifest and check every file's hash.
pub fn load_manifest(dir: &Path) -> Result<Manifest, RuntimeError> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| err(&path, format!("cannot read: {e}")))?;
    let m: Manifest = serde_json::from_str(&text).map_err(|e| err(&path, format!("not a manifest: {e}")))?;
    if m.format != FORMAT {
        return Err(err(&path, format!("package format {} (this runtime reads {FORMAT})", m.format)));
    }
    for (file, expected) in &m.files {
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(err(&path, format!("file `{file}` is not a plain name in the package")));
        }
        let f = dir.join(file);
        let got = hash_file(&f).map_err(|e| err(&f, format!("cannot read: {e}")))?;
        if &got != expected {
            return Err(err(
                &f,
                format!("blake3 {got} does not match the manifest's {expected}: the package was altered"),
            ));
        }
    }
    Ok(m)
}

/// Load one package: manifest, hashes, and its graph (`shard.ir`).
pub fn load(dir: &Path) -> Result<(Manifest, Graph), RuntimeError> {
    let m = load_manifest(dir)?;
    let path = dir.join("shard.ir");
    let text = std::fs::read_to_string(&path).map_err(|e| err(&path, format!("cannot read: {e}")))?;
    let graph = shardc_ir::text::parse(&text).map_err(|e| err(&path, e.to_string()))?;
    shardc_ir::verify(&graph).map_err(|e| err(&path, e.to_string()))?;
    Ok((m, graph))
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
    if packages.is_empty() {
        return Err(err(out, "no packages (folders with manifest.json)".into()));
    }
    packages.sort_by_key(|(m, _, _)| m.stage);
    let mut manifests = Vec::new();
    let mut sessions = Vec::new();
    for (m, g, dir) in packages {
        sessions.push(Session::new(g, &dir));
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
        let (mut g, _) = units_graph(&self.graph, &self.standby.node_units, range[0] - h0..range[1] - h0);
        g.name = format!("units{}-{}", range[0], range[1]);
        Ok(g)
    }
}
