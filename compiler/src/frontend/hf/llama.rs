//! Llama, Mistral and Qwen2: RMSNorm, rotary positions, grouped-query attention
//! (q/k/v bias for Qwen2 or `attention_bias`), SwiGLU MLP.

use shardc_ir::ops::*;
use shardc_ir::{Op, Unit, ValueId};

use super::builder::Builder;
use super::{attention, lm_head, Arch, Common, HfError};

pub(crate) fn lower(b: &mut Builder, arch: &Arch, common: &Common) -> Result<ValueId, HfError> {
    let (h, hd) = (arch.hidden, arch.head_dim);
    let embed = "model.embed_tokens.weight";
    let table = b.weight(embed, &[arch.vocab, h])?;
    let mut x =
        b.scoped("model/embed_tokens", |b| b.op("Gather", Op::Gather(Gather { axis: 0 }), &[table, common.ids]));
    let (cos, sin) = b.scoped("model/rotary_emb", |b| rotary_tables(b, arch, common.positions));
    for i in 0..arch.layers {
        let p = format!("model.layers.{i}");
        x = b.scoped(&format!("model/layers.{i}"), |b| -> Result<ValueId, HfError> {
            b.unit = Unit::Attention(i as u32);
            let normed = b.rms_norm("input_layernorm", x, &format!("{p}.input_layernorm.weight"), h, arch.norm_eps)?;
            let attn = b.scoped("self_attn", |b| -> Result<ValueId, HfError> {
                let bias = |n: &str| arch.qkv_bias.then(|| format!("{p}.self_attn.{n}.bias"));
                let q = b.linear(
                    "q_proj",
                    normed,
                    &format!("{p}.self_attn.q_proj.weight"),
                    bias("q_proj").as_deref(),
                    (h, arch.heads * hd),
                    true,
                )?;
                let k = b.linear(
                    "k_proj",
                    normed,
                    &format!("{p}.self_attn.k_proj.weight"),
                    bias("k_proj").as_deref(),
                    (h, arch.kv_heads * hd),
                    true,
                )?;
                let v = b.linear(
                    "v_proj",
                    normed,
                    &format!("{p}.self_attn.v_proj.weight"),
                    bias("v_proj").as_deref(),
                    (h, arch.kv_heads * hd),
                    true,
                )?;
                let q = b.scoped("q", |b| b.split_heads(q, arch.heads, hd));
                let k = b.scoped("k", |b| b.split_heads(k, arch.kv_heads, hd));
                let v = b.scoped("v", |b| b.split_heads(v, arch.kv_heads, hd));
                let q = b.scoped("rotary_q", |b| rotate(b, q, cos, sin, hd));
                let k = b.scoped("rotary_k", |b| rotate(b, k, cos, sin, hd));
                let ctx = attention(b, arch, common, i, (q, k, v), 1.0 / (hd as f64).sqrt(), None);
                let merged = b.merge_heads(ctx, arch.heads * hd);
                let o_bias = arch.o_bias.then(|| format!("{p}.self_attn.o_proj.bias"));
                b.linear(
                    "o_proj",
                    merged,
                    &format!("{p}.self_attn.o_proj.weight"),
                    o_bias.as_deref(),
                    (arch.heads * hd, h),
                    true,
                )
            })?;
            let x = b.op("Add_attn", Op::Add(Add {}), &[x, attn]);
            b.unit = Unit::Mlp(i as u32);
            let normed = b.rms_norm(
                "post_attention_layernorm",
                x,
                &format!("{p}.post_attention_layernorm.weight"),
                h,
                arch.norm_eps,
            )?;
            let mlp = b.scoped("mlp", |b| -> Result<ValueId, HfError> {
                let bias = |n: &str| arch.mlp_bias.then(|| format!("{p}.mlp.{n}.bias"));
                let ff = arch.intermediate;
                let gate = b.linear(
                    "gate_proj",
                    normed,
                    &format!("{p}.mlp.gate_proj.weight"),
                    bias("gate_proj").as_deref(),
                    (h, ff),
                    true,
                )?;
                let up = b.linear(
                    "up_proj",
                    normed,
                    &format!("{p}.mlp.up_proj.weight"),
                    bias("up_proj").as_deref(),
                    (h, ff),
                    true,
                )?;
                let act = b.scoped("act_fn", |b| b.activation(gate, arch.activation));
                let prod = b.op("Mul", Op::Mul(Mul {}), &[act, up]);
                b.linear(
                    "down_proj",
                    prod,
                    &format!("{p}.mlp.down_proj.weight"),
                    bias("down_proj").as_deref(),
                    (ff, h),
                    true,
                )
            })?;
            Ok(b.op("Add_mlp", Op::Add(Add {}), &[x, mlp]))
        })?;
    }
    b.unit = Unit::Head;
    let x = b.rms_norm("model/norm", x, "model.norm.weight", h, arch.norm_eps)?;
    lm_head(b, arch, x, embed)
}

/// `cos` and `sin` tables `[seq, head_dim]` for the new positions.
fn rotary_tables(b: &mut Builder, arch: &Arch, positions: ValueId) -> (ValueId, ValueId) {
    let hd = arch.head_dim;
    // inv_freq[i] = 1 / theta^(2i / head_dim), rounded to f32 as PyTorch computes it.
    let inv: Vec<f64> = (0..hd / 2)
        .map(|i| {
            let exponent = (2 * i) as f32 / hd as f32;
            f64::from(1.0 / (arch.rope_theta as f32).powf(exponent))
        })
        .collect();
    let inv_freq = b.floats("inv_freq", &[hd / 2], &inv);
    let pos = b.op("Cast", Op::Cast(Cast { to: shardc_ir::DType::F32, saturate: 1, round_mode: "up".into() }), &[positions]);
    let axes = b.ints("axes", &[1], &[1]);
    let col = b.op("Unsqueeze", Op::Unsqueeze(Unsqueeze {}), &[pos, axes]);
    let freqs = b.op("Mul", Op::Mul(Mul {}), &[col, inv_freq]);
    let emb = b.op("Concat", Op::Concat(Concat { axis: -1 }), &[freqs, freqs]);
    (b.op("Cos", Op::Cos(Cos {}), &[emb]), b.op("Sin", Op::Sin(Sin {}), &[emb]))
}

/// `x · cos + rotate_half(x) · sin`, `rotate_half(x) = [-x₂, x₁]`.
fn rotate(b: &mut Builder, x: ValueId, cos: ValueId, sin: ValueId, hd: usize) -> ValueId {
    let half = (hd / 2) as i64;
    let axis = b.ints("axis", &[1], &[-1]);
    let zero = b.ints("start", &[1], &[0]);
    let mid = b.ints("middle", &[1], &[half]);
    let end = b.ints("end", &[1], &[hd as i64]);
    let x1 = b.op("Slice", Op::Slice(Slice {}), &[x, zero, mid, axis]);
    let x2 = b.op("Slice_1", Op::Slice(Slice {}), &[x, mid, end, axis]);
    let neg = b.op("Neg", Op::Neg(Neg {}), &[x2]);
    let rotated = b.op("Concat", Op::Concat(Concat { axis: -1 }), &[neg, x1]);
    let a = b.op("Mul", Op::Mul(Mul {}), &[x, cos]);
    let c = b.op("Mul_1", Op::Mul(Mul {}), &[rotated, sin]);
    b.op("Add", Op::Add(Add {}), &[a, c])
}
