//! The roles a language model's inputs and outputs play, found from the graph's
//! structure (not its names): the token input indexes an embedding table, and the
//! logits are the first output that is not a cache, scoring every entry of that table.

use shardc_ir::{Graph, Op, ValueDef, ValueId};

/// A graph a client can drive token by token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LmRoles {
    /// The integer `[batch, seq]` input, the only input besides the KV cache.
    pub token_input: ValueId,
    /// The first output that is not a cache: `[batch, seq, vocab]` floats.
    pub logits: ValueId,
    pub vocab: i64,
}

/// Whether a value is a weight or computed from weights and constants alone.
fn stored(graph: &Graph, v: ValueId) -> bool {
    match graph.value(v).def {
        ValueDef::Weight(_) | ValueDef::Const(_) => true,
        ValueDef::Input => false,
        ValueDef::Node(n) => graph.node(n).inputs.iter().flatten().all(|&i| stored(graph, i)),
    }
}

/// The language-model roles of a shape-inferred graph, if it has them.
pub fn lm_roles(graph: &Graph) -> Option<LmRoles> {
    let inputs: Vec<ValueId> = graph.inputs.iter().copied().filter(|&v| graph.cache_of_input(v).is_none()).collect();
    let [token_input] = inputs.as_slice() else { return None };
    let ty = graph.value(*token_input).ty.as_ref()?;
    if !ty.dtype.is_integer() || ty.rank() != 2 {
        return None;
    }
    // The embedding table it indexes: its rows are the vocabulary.
    let uses = graph.uses();
    let vocab = uses[token_input.index()].iter().find_map(|&n| {
        let node = graph.node(n);
        match (&node.op, node.inputs.as_slice()) {
            (Op::Gather(g), [Some(table), Some(idx)])
                if *idx == *token_input && g.axis == 0 && stored(graph, *table) =>
            {
                graph.value(*table).ty.as_ref()?.shape.first()?.as_known()
            }
            _ => None,
        }
    })?;
    let logits = graph.outputs.iter().copied().find(|&v| graph.cache_of_output(v).is_none())?;
    let lt = graph.value(logits).ty.as_ref()?;
    (lt.dtype.is_float() && lt.rank() == 3 && lt.shape[2].as_known() == Some(vocab)).then_some(LmRoles {
        token_input: *token_input,
        logits,
        vocab,
    })
}
