//! shardc's passes over the IR and the pipeline that runs them.
//!
//! A pass is a small trait object ([`Pass`]); the pipeline is the literal ordered
//! list in [`pipeline`]. [`run_pipeline`] runs it, verifying the graph after every
//! pass when asked (tests always ask), and stops after a named pass for `--after`.

pub mod calibrate;
pub mod cost;
pub mod devices;
pub mod infer;
pub mod infer_shapes;
pub mod kernels;
pub mod partition;
pub mod plan;
pub mod quantity;
pub mod quantize;
pub mod roles;
pub mod segment;
pub mod simplify;
pub mod split;
pub mod transmission;

use std::fmt;

use shardc_ir::{Graph, VerifyError};

/// State shared by the passes of one pipeline run.
#[derive(Debug, Default)]
pub struct Ctx {
    /// Verify the graph after every pass.
    pub verify_each: bool,
    /// Values of graph inputs known for this run, by name (`shardc run` with given
    /// inputs): shape arithmetic may fold them. Empty when compiling for any input.
    pub input_contents: std::collections::BTreeMap<String, Vec<i64>>,
}

/// A pass error: which pass, and what went wrong (naming the node where there is one).
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("pass `{pass}`: node `{node}` ({op}): {message}")]
    Node { pass: &'static str, node: String, op: &'static str, message: String },
    #[error("pass `{pass}`: {message}")]
    Graph { pass: &'static str, message: String },
    #[error("after pass `{pass}`: {source}")]
    Verify { pass: &'static str, source: VerifyError },
    #[error("unknown pass `{0}` (passes: {list})", list = PASS_NAMES.join(", "))]
    UnknownPass(String),
}

/// A transformation or analysis over a graph.
pub trait Pass {
    /// The name used by `--after` and in snapshots.
    fn name(&self) -> &'static str;
    /// Run over the graph (each pass runs once: the pipeline is a literal sequence, not
    /// a fixpoint iteration, so a pass reports no "changed" flag).
    fn run(&self, graph: &mut Graph, ctx: &mut Ctx) -> Result<(), PassError>;
}

impl fmt::Debug for dyn Pass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The pipeline, in order.
pub fn pipeline() -> Vec<Box<dyn Pass>> {
    vec![Box::new(infer_shapes::InferShapes), Box::new(simplify::Simplify)]
}

/// Names of the pipeline's passes, in order.
pub const PASS_NAMES: &[&str] = &["infer-shapes", "simplify"];

/// Run the pipeline, stopping after the pass named `stop_after` when given.
pub fn run_pipeline(graph: &mut Graph, ctx: &mut Ctx, stop_after: Option<&str>) -> Result<(), PassError> {
    if let Some(name) = stop_after {
        if !PASS_NAMES.contains(&name) {
            return Err(PassError::UnknownPass(name.to_string()));
        }
    }
    for pass in pipeline() {
        pass.run(graph, ctx)?;
        if ctx.verify_each {
            shardc_ir::verify(graph).map_err(|source| PassError::Verify { pass: pass.name(), source })?;
        }
        if stop_after == Some(pass.name()) {
            break;
        }
    }
    Ok(())
}
