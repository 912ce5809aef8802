//! Llama-style decoders: RMSNorm, rotary positions, grouped-query attention, gated
//! MLP — Llama (and Llama 3.x rope scaling), Mistral, Qwen2 (q/k/v biases), Qwen3
//! (q/k RMSNorm over each head), Gemma 1/2/3 (RMSNorm scaling by `1 + w`, embeddings
//! scaled by `sqrt(hidden)`, norms after attention and around the MLP, soft-capped
//! scores and logits, `query_pre_attn_scalar`, sliding-window layers with their own
//! rotary base), Phi-3 (fused `qkv_proj` and `gate_up_proj`, partial rotary, longrope).

use shardc_ir::ops::*;
use shardc_ir::{DType, Op, Unit, ValueId};

use super::builder::Builder;
use super::config::{InvFreq, Rope};
use super::{attention, lm_head, Arch, AttnOptions, Common, HfError};

/// An RMSNorm of `arch`'s kind (Gemma's scales by `1 + w`).
fn norm(b: &mut Builder, arch: &Arch, label: &str, x: ValueId, weight: &str, dim: usize) -> Result<ValueId, HfError> {
    if arch.norm_plus_one {
        b.rms_norm_plus_one(label, x, weight, dim, arch.norm_eps)
    } else {
        b.rms_norm(label, x, weight, dim, arch.norm_eps)
    }
}

pub(crate) fn lower(b: &mut Builder, arch: &Arch, common: &Common) -> Result<ValueId, HfError> {
    let (h, hd) = (arch.hidden, arch.head_dim);
    let embed = "model.embed_tokens.weight";
    let table = b.weight(embed, &[arch.vocab, h])?;
    let mut x = b.scoped("model/embed_tokens", |b| {
        let x = b.op("Gather", Op::Gather(Gather { axis: 0 }), &[table, common.ids]);
        if arch.embed_scale {
            // sqrt(hidden), as the weights' dtype holds it.
            let scale = round_to((h as f64).sqrt(), b.weight_dtype(embed));
            let s = b.scalar("embed_scale", scale);
            b.op("Mul", Op::Mul(Mul {}), &[x, s])
        } else {
            x
        }
    });
    let tables: Vec<(ValueId, ValueId)> = arch
        .ropes
        .iter()
        .enumerate()
        .map(|(k, rope)| {
            let scope =
                if arch.ropes.len() == 1 { "model/rotary_emb".to_string() } else { format!("model/rotary_emb_{k}") };
            b.scoped(&scope, |b| rotary_tables(b, rope, common))
        })
        .collect();
    let scale = 1.0 / arch.query_pre_attn_scalar.unwrap_or(hd as f64).sqrt();
    for i in 0..arch.layers {
        let p = format!("model.layers.{i}");
        let la = arch.layer_attention[i];
        let (cos, sin) = tables[la.rope];
        let rotary_dim = arch.ropes[la.rope].rotary_dim;
        x = b.scoped(&format!("model/layers.{i}"), |b| -> Result<ValueId, HfError> {
            b.unit = Unit::Attention(i as u32);
            let normed = norm(b, arch, "input_layernorm", x, &format!("{p}.input_layernorm.weight"), h)?;
            let attn = b.scoped("self_attn", |b| -> Result<ValueId, HfError> {
                let (q, k, v) = if arch.fused_projections {
                    let width = (arch.heads + 2 * arch.kv_heads) * hd;
                    let qkv = b.linear(
                        "qkv_proj",
                        normed,
                        &format!("{p}.self_attn.qkv_proj.weight"),
                        None,
                        (h, width),
                        true,
                    )?;
                    let sizes = b.ints(
                        "split_sizes",
                        &[3],
                        &[(arch.heads * hd) as i64, (arch.kv_heads * hd) as i64, (arch.kv_heads * hd) as i64],
                    );
                    let parts = b.op_n(
                        "Split",
                        Op::Split(Split { axis: 2, num_outputs: None }),
                        vec![Some(qkv), Some(sizes)],
                        3,
                    );
                    (parts[0], parts[1], parts[2])
                } else {
                    let bias = |n: &str| arch.qkv_bias.then(|| format!("{p}.self_attn.{n}.bias"));
                    let proj = |b: &mut Builder, n: &str, out: usize| {
                        b.linear(n, normed, &format!("{p}.self_attn.{n}.weight"), bias(n).as_deref(), (h, out), true)
                    };
                    let q = proj(b, "q_proj", arch.heads * hd)?;
                    let k = proj(b, "k_proj", arch.kv_heads * hd)?;
                    let v = proj(b, "v_proj", arch.kv_heads * hd)?;
                    (q, k, v)
                };
                let mut q = b.scoped("q", |b| b.split_heads(q, arch.heads, hd));
                let mut k = b.scoped("k", |b| b.split_heads(k, arch.kv_heads, hd));
                let v = b.scoped("v", |b| b.split_heads(v, arch.kv_heads, hd));
                if arch.qk_norm {
                    q = norm(b, arch, "q_norm", q, &format!("{p}.self_attn.q_norm.weight"), hd)?;
                    k = norm(b, arch, "k_norm", k, &format!("{p}.self_attn.k_norm.weight"), hd)?;
                }
                let q = b.scoped("rotary_q", |b| rotate(b, q, cos, sin, rotary_dim, hd));
                let k = b.scoped("rotary_k", |b| rotate(b, k, cos, sin, rotary_dim, hd));
                let opts = AttnOptions { scale, softcap: arch.attn_softcap, bias: None };
                let ctx = attention(b, arch, common, i, (q, k, v), &opts);
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
            let attn = if arch.sandwich_norms {
                norm(b, arch, "post_attention_layernorm", attn, &format!("{p}.post_attention_layernorm.weight"), h)?
            } else {
                attn
            };
            let x = b.op("Add_attn", Op::Add(Add {}), &[x, attn]);
            b.unit = Unit::Mlp(i as u32);
            let pre = if arch.sandwich_norms { "pre_feedforward_layernorm" } else { "post_attention_layernorm" };
            let normed = norm(b, arch, pre, x, &format!("{p}.{pre}.weight"), h)?;
            let mlp = b.scoped("mlp", |b| -> Result<ValueId, HfError> {
                let ff = arch.intermediate;
                let (gate, up) = if arch.fused_projections {
                    let both = b.linear(
                        "gate_up_proj",
                        normed,
                        &format!("{p}.mlp.gate_up_proj.weight"),
                        None,
                        (h, 2 * ff),
                        true,
                    )?;
                    let sizes = b.ints("split_sizes", &[2], &[ff as i64, ff as i64]);
                    let parts = b.op_n(
                        "Split",
                        Op::Split(Split { axis: 2, num_outputs: None }),
                        vec![Some(both), Some(sizes)],
                        2,
                    );
                    (parts[0], parts[1])
                } else {
                    let bias = |n: &str| arch.mlp_bias.then(|| format!("{p}.mlp.{n}.bias"));
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
                    (gate, up)
                };
                let act = b.scoped("act_fn", |b| b.activation(gate, arch.activation));
                let prod = b.op("Mul", Op::Mul(Mul {}), &[act, up]);
                let bias = arch.mlp_bias.then(|| format!("{p}.mlp.down_proj.bias"));
                b.linear("down_proj", prod, &format!("{p}.mlp.down_proj.weight"), bias.as_deref(), (ff, h), true)
            })?;
            let mlp = if arch.sandwich_norms {
                norm(b, arch, "post_feedforward_layernorm", mlp, &format!("{p}.post_feedforward_layernorm.weight"), h)?
            } else {
                mlp
            };
            Ok(b.op("Add_mlp", Op::Add(Add {}), &[x, mlp]))
        })?;
    }
    b.unit = Unit::Head;
    let x = norm(b, arch, "model/norm", x, "model.norm.weight", h)?;
    lm_head(b, arch, x, embed)
}

/// `v` rounded to what `dtype` holds.
fn round_to(v: f64, dtype: DType) -> f64 {
    match dtype {
        DType::F16 => half::f16::from_f64(v).to_f64(),
        DType::BF16 => half::bf16::from_f64(v).to_f64(),
        _ => f64::from(v as f32),
    }
}

/// `cos` and `sin` tables `[seq, rotary_dim]` for the new positions.
fn rotary_tables(b: &mut Builder, rope: &Rope, common: &Common) -> (ValueId, ValueId) {
    let half = rope.rotary_dim / 2;
    let inv_freq = match &rope.inv_freq {
        InvFreq::Fixed(v) => b.floats("inv_freq", &[half], v),
        InvFreq::Switch { short, long, threshold } => {
            // Long factors once the context passes the original length, as transformers
            // decides from the largest position.
            let s = b.floats("inv_freq_short", &[half], short);
            let l = b.floats("inv_freq_long", &[half], long);
            let t = b.ints("original_max_positions", &[], &[*threshold as i64]);
            let beyond = b.op("Greater_original", Op::Greater(Greater {}), &[common.total, t]);
            b.op("Where_inv_freq", Op::Where(Where {}), &[beyond, l, s])
        }
    };
    let pos =
        b.op("Cast", Op::Cast(Cast { to: DType::F32, saturate: 1, round_mode: "up".into() }), &[common.positions]);
    let axes = b.ints("axes", &[1], &[1]);
    let col = b.op("Unsqueeze", Op::Unsqueeze(Unsqueeze {}), &[pos, axes]);
    let freqs = b.op("Mul", Op::Mul(Mul {}), &[col, inv_freq]);
    let emb = b.op("Concat", Op::Concat(Concat { axis: -1 }), &[freqs, freqs]);
    let mut cos = b.op("Cos", Op::Cos(Cos {}), &[emb]);
    let mut sin = b.op("Sin", Op::Sin(Sin {}), &[emb]);
    if rope.attention_factor != 1.0 {
        let f = b.scalar("attention_factor", f64::from(rope.attention_factor as f32));
        cos = b.op("Mul_cos", Op::Mul(Mul {}), &[cos, f]);
        sin = b.op("Mul_sin", Op::Mul(Mul {}), &[sin, f]);
    }
    (cos, sin)
}

/// `x · cos + rotate_half(x) · sin` on the first `rotary_dim` dims of each head (the
/// rest pass through), `rotate_half(x) = [-x₂, x₁]`.
fn rotate(b: &mut Builder, x: ValueId, cos: ValueId, sin: ValueId, rotary_dim: usize, hd: usize) -> ValueId {
    let axis = b.ints("axis", &[1], &[-1]);
    let zero = b.ints("start", &[1], &[0]);
    let (rot, pass) = if rotary_dim < hd {
        let r = b.ints("rotary_end", &[1], &[rotary_dim as i64]);
        let end = b.ints("end", &[1], &[hd as i64]);
        let rot = b.op("Slice_rotary", Op::Slice(Slice {}), &[x, zero, r, axis]);
        let pass = b.op("Slice_pass", Op::Slice(Slice {}), &[x, r, end, axis]);
        (rot, Some(pass))
    } else {
        (x, None)
    };
    let half = (rotary_dim / 2) as i64;
    let mid = b.ints("middle", &[1], &[half]);
    let end = b.ints("rotary_dim", &[1], &[rotary_dim as i64]);
    let x1 = b.op("Slice", Op::Slice(Slice {}), &[rot, zero, mid, axis]);
    let x2 = b.op("Slice_1", Op::Slice(Slice {}), &[rot, mid, end, axis]);
    let neg = b.op("Neg", Op::Neg(Neg {}), &[x2]);
    let rotated = b.op("Concat", Op::Concat(Concat { axis: -1 }), &[neg, x1]);
    let a = b.op("Mul", Op::Mul(Mul {}), &[rot, cos]);
    let c = b.op("Mul_1", Op::Mul(Mul {}), &[rotated, sin]);
    let y = b.op("Add", Op::Add(Add {}), &[a, c]);
    match pass {
        Some(p) => b.op("Concat_pass", Op::Concat(Concat { axis: -1 }), &[y, p]),
        None => y,
    }
}
