//! BLOOM: LayerNorm after the embeddings, ALiBi position biases, a fused
//! `query_key_value` projection laid out per head as `[heads, 3, head_dim]`, GELU
//! (tanh) MLP, tied head.

use shardc_ir::ops::*;
use shardc_ir::{DType, Op, Unit, ValueId};

use super::builder::Builder;
use super::{attention, lm_head, Arch, AttnOptions, Common, HfError};

/// ALiBi slopes for `n` heads (Press et al.; as BLOOM computes them).
pub fn alibi_slopes(n: usize) -> Vec<f64> {
    let closest = 1usize << (usize::BITS - 1 - n.leading_zeros());
    let base = 2f64.powf(-(2f64.powf(-((closest as f64).log2() - 3.0))));
    let mut slopes: Vec<f64> = (1..=closest).map(|i| base.powi(i as i32)).collect();
    if closest != n {
        let extra_base = 2f64.powf(-(2f64.powf(-((2 * closest) as f64).log2() + 3.0)));
        let extra = n - closest;
        slopes.extend((0..extra).map(|i| extra_base.powi((2 * i + 1) as i32)));
    }
    // PyTorch computes these in f32.
    slopes.into_iter().map(|s| f64::from(s as f32)).collect()
}

pub(crate) fn lower(b: &mut Builder, arch: &Arch, common: &Common) -> Result<ValueId, HfError> {
    let (h, hd, nh) = (arch.hidden, arch.head_dim, arch.heads);
    let embed = "transformer.word_embeddings.weight";
    let table = b.weight(embed, &[arch.vocab, h])?;
    let x = b.scoped("transformer/word_embeddings", |b| {
        b.op("Gather", Op::Gather(Gather { axis: 0 }), &[table, common.ids])
    });
    let mut x = b.layer_norm(
        "transformer/word_embeddings_layernorm",
        x,
        "transformer.word_embeddings_layernorm",
        h,
        arch.norm_eps,
    )?;
    // ALiBi: slope[head] · key position, [heads, 1, past+seq].
    let alibi = b.scoped("transformer/alibi", |b| {
        let slopes = b.floats("slopes", &[nh, 1, 1], &alibi_slopes(nh));
        let pos = b.op(
            "Cast",
            Op::Cast(Cast { to: DType::F32, saturate: 1, round_mode: "up".into() }),
            &[common.key_positions],
        );
        b.op("Mul", Op::Mul(Mul {}), &[slopes, pos])
    });
    for i in 0..arch.layers {
        let p = format!("transformer.h.{i}");
        x = b.scoped(&format!("transformer/h.{i}"), |b| -> Result<ValueId, HfError> {
            b.unit = Unit::Attention(i as u32);
            let ln = b.layer_norm("input_layernorm", x, &format!("{p}.input_layernorm"), h, arch.norm_eps)?;
            let residual = if arch.residual_post_layernorm { ln } else { x };
            let attn = b.scoped("self_attention", |b| -> Result<ValueId, HfError> {
                let fused = b.linear(
                    "query_key_value",
                    ln,
                    &format!("{p}.self_attention.query_key_value.weight"),
                    Some(&format!("{p}.self_attention.query_key_value.bias")),
                    (h, 3 * h),
                    true,
                )?;
                // [batch, seq, heads, 3, dim] → q, k, v of [batch, seq, heads, dim].
                let target = b.ints("fused_shape", &[5], &[0, 0, nh as i64, 3, hd as i64]);
                let r = b.op("Reshape", Op::Reshape(Reshape { allowzero: 0 }), &[fused, target]);
                let axis = b.ints("part_axis", &[1], &[3]);
                let mut parts = Vec::new();
                for (k, name) in ["query", "key", "value"].iter().enumerate() {
                    let start = b.ints(&format!("{name}_start"), &[1], &[k as i64]);
                    let end = b.ints(&format!("{name}_end"), &[1], &[k as i64 + 1]);
                    let s = b.op(&format!("Slice_{name}"), Op::Slice(Slice {}), &[r, start, end, axis]);
                    let sq = b.op(&format!("Squeeze_{name}"), Op::Squeeze(Squeeze {}), &[s, axis]);
                    parts.push(b.op(
                        &format!("Transpose_{name}"),
                        Op::Transpose(Transpose { perm: Some(vec![0, 2, 1, 3]) }),
                        &[sq],
                    ));
                }
                let opts = AttnOptions { scale: 1.0 / (hd as f64).sqrt(), softcap: None, bias: Some(alibi) };
                let ctx = attention(b, arch, common, i, (parts[0], parts[1], parts[2]), &opts);
                let merged = b.merge_heads(ctx, h);
                b.linear(
                    "dense",
                    merged,
                    &format!("{p}.self_attention.dense.weight"),
                    Some(&format!("{p}.self_attention.dense.bias")),
                    (h, h),
                    true,
                )
            })?;
            let x = b.op("Add_attn", Op::Add(Add {}), &[attn, residual]);
            b.unit = Unit::Mlp(i as u32);
            let ln2 = b.layer_norm(
                "post_attention_layernorm",
                x,
                &format!("{p}.post_attention_layernorm"),
                h,
                arch.norm_eps,
            )?;
            let residual = if arch.residual_post_layernorm { ln2 } else { x };
            let mlp = b.scoped("mlp", |b| -> Result<ValueId, HfError> {
                let ff = arch.intermediate;
                let up = b.linear(
                    "dense_h_to_4h",
                    ln2,
                    &format!("{p}.mlp.dense_h_to_4h.weight"),
                    Some(&format!("{p}.mlp.dense_h_to_4h.bias")),
                    (h, ff),
                    true,
                )?;
                let act = b.scoped("gelu", |b| b.activation(up, arch.activation));
                b.linear(
                    "dense_4h_to_h",
                    act,
                    &format!("{p}.mlp.dense_4h_to_h.weight"),
                    Some(&format!("{p}.mlp.dense_4h_to_h.bias")),
                    (ff, h),
                    true,
                )
            })?;
            Ok(b.op("Add_mlp", Op::Add(Add {}), &[mlp, residual]))
        })?;
    }
    b.unit = Unit::Head;
    let x = b.layer_norm("transformer/ln_f", x, "transformer.ln_f", h, arch.norm_eps)?;
    lm_head(b, arch, x, embed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn alibi_slopes_follow_the_paper() {
        let s = super::alibi_slopes(8);
        assert_eq!(s.len(), 8);
        assert!((s[0] - 0.5).abs() < 1e-7 && (s[7] - 1.0 / 256.0).abs() < 1e-9, "{s:?}");
        // 12 heads: 8 from base 2^-1, then 4 odd powers of 2^-0.5.
        let s = super::alibi_slopes(12);
        assert!((s[8] - 2f64.powf(-0.5)).abs() < 1e-7 && (s[9] - 2f64.powf(-1.5)).abs() < 1e-7, "{s:?}");
    }
}
