//! `infer-shapes`: write the dtype and symbolic shape of every value into the graph.

use shardc_ir::Graph;

use crate::infer::{infer, NodeError};
use crate::{Ctx, Pass, PassError};

/// The `infer-shapes` pass.
#[derive(Debug, Clone, Copy)]
pub struct InferShapes;

/// Turn an inference error into a pass error naming the node.
pub(crate) fn node_error(graph: &Graph, pass: &'static str, e: NodeError) -> PassError {
    let node = &graph.nodes[e.node];
    let name = if node.name.is_empty() { format!("n{}", e.node) } else { node.name.clone() };
    PassError::Node { pass, node: name, op: node.op.name(), message: e.message }
}

impl Pass for InferShapes {
    fn name(&self) -> &'static str {
        "infer-shapes"
    }

    fn run(&self, graph: &mut Graph, ctx: &mut Ctx) -> Result<(), PassError> {
        let facts = infer(graph, &ctx.input_contents).map_err(|e| node_error(graph, self.name(), e))?;
        for (value, ty) in graph.values.iter_mut().zip(facts.types) {
            if let Some(ty) = ty {
                value.ty = Some(ty);
            }
        }
        Ok(())
    }
}
