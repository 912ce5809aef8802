//! A package's `manifest.json` and `standby.json`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::tensor::{DType, Dim, Endpoint};

/// The current package format (3: typed dtypes, shapes and endpoints).
pub const FORMAT: u32 = 3;

/// blake3 of a file, hex.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    let mut f = std::fs::File::open(path)?;
    std::io::copy(&mut f, &mut hasher)?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// A tensor a stage takes in or gives out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    pub name: String,
    /// `null` when not inferred.
    #[serde(with = "crate::tensor::opt_dtype")]
    pub dtype: Option<DType>,
    /// `null` when not inferred.
    #[serde(with = "crate::tensor::opt_shape")]
    pub shape: Option<Vec<Dim>>,
    /// Who sends it / who receives it.
    pub peers: Vec<Endpoint>,
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
    /// The float weights' dtype as stored (`null` without float weights).
    #[serde(with = "crate::tensor::opt_dtype")]
    pub weights_dtype: Option<DType>,
    /// blake3 of every other file of the package.
    pub files: BTreeMap<String, String>,
    /// blake3 of the output folder's files the runtime reads (`transmission_map.json`,
    /// `balance.json`), the same in every manifest of one compile.
    pub shared: BTreeMap<String, String>,
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
