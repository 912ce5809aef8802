//! GPT-2: token and learned position embeddings, pre-LayerNorm blocks with a fused
//! `c_attn` projection (`Conv1D`, weights stored `[in, out]`), GELU MLP, tied head.

use shardc_ir::ops::*;
use shardc_ir::{Op, Unit, ValueId};

use super::builder::Builder;
use super::{attention, lm_head, Arch, AttnOptions, Common, HfError};

pub(crate) fn lower(b: &mut Builder, arch: &Arch, common: &Common) -> Result<ValueId, HfError> {
    let (h, hd) = (arch.hidden, arch.head_dim);
    let wte_name = "transformer.wte.weight";
    let wte = b.weight(wte_name, &[arch.vocab, h])?;
    let wpe = b.weight("transformer.wpe.weight", &[arch.max_positions, h])?;
    let mut x = b.scoped("transformer", |b| {
        let tokens = b.op("wte/Gather", Op::Gather(Gather { axis: 0 }), &[wte, common.ids]);
        let positions = b.op("wpe/Gather", Op::Gather(Gather { axis: 0 }), &[wpe, common.positions]);
        b.op("Add", Op::Add(Add {}), &[tokens, positions])
    });
    let scale = if arch.scale_attention { 1.0 / (hd as f64).sqrt() } else { 1.0 };
    for i in 0..arch.layers {
        let p = format!("transformer.h.{i}");
        x = b.scoped(&format!("transformer/h.{i}"), |b| -> Result<ValueId, HfError> {
            b.unit = Unit::Attention(i as u32);
            let a = b.layer_norm("ln_1", x, &format!("{p}.ln_1"), h, arch.norm_eps)?;
            let attn = b.scoped("attn", |b| -> Result<ValueId, HfError> {
                let qkv = b.linear(
                    "c_attn",
                    a,
                    &format!("{p}.attn.c_attn.weight"),
                    Some(&format!("{p}.attn.c_attn.bias")),
                    (h, 3 * h),
                    false,
                )?;
                let sizes = b.ints("split_sizes", &[3], &[h as i64; 3]);
                let parts =
                    b.op_n("Split", Op::Split(Split { axis: 2, num_outputs: None }), vec![Some(qkv), Some(sizes)], 3);
                let q = b.scoped("q", |b| b.split_heads(parts[0], arch.heads, hd));
                let k = b.scoped("k", |b| b.split_heads(parts[1], arch.heads, hd));
                let v = b.scoped("v", |b| b.split_heads(parts[2], arch.heads, hd));
                let ctx = attention(b, arch, common, i, (q, k, v), &AttnOptions { scale, softcap: None, bias: None });
                let merged = b.merge_heads(ctx, h);
                b.linear(
                    "c_proj",
                    merged,
                    &format!("{p}.attn.c_proj.weight"),
                    Some(&format!("{p}.attn.c_proj.bias")),
                    (h, h),
                    false,
                )
            })?;
            let x = b.op("Add_attn", Op::Add(Add {}), &[x, attn]);
            b.unit = Unit::Mlp(i as u32);
            let m = b.layer_norm("ln_2", x, &format!("{p}.ln_2"), h, arch.norm_eps)?;
            let mlp = b.scoped("mlp", |b| -> Result<ValueId, HfError> {
                let ff = arch.intermediate;
                let up = b.linear(
                    "c_fc",
                    m,
                    &format!("{p}.mlp.c_fc.weight"),
                    Some(&format!("{p}.mlp.c_fc.bias")),
                    (h, ff),
                    false,
                )?;
                let act = b.scoped("act", |b| b.activation(up, arch.activation));
                b.linear(
                    "c_proj",
                    act,
                    &format!("{p}.mlp.c_proj.weight"),
                    Some(&format!("{p}.mlp.c_proj.bias")),
                    (ff, h),
                    false,
                )
            })?;
            Ok(b.op("Add_mlp", Op::Add(Add {}), &[x, mlp]))
        })?;
    }
    b.unit = Unit::Head;
    let x = b.layer_norm("transformer/ln_f", x, "transformer.ln_f", h, arch.norm_eps)?;
    lm_head(b, arch, x, wte_name)
}
