//! What `shardc run` and `shardc verify` do and print.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use shardc::cli::ModelArgs;

use crate::{open, VerificationFailed};

/// `shardc verify --inputs`: every output must agree.
pub(crate) fn verify_tensors(model: &Path, out: &Path, file: &Path, tolerance: f64, save: Option<&Path>) -> Result<()> {
    let report = shardc::verify::verify_outputs(model, out, file, tolerance)?;
    if let Some(path) = save {
        let tensors: Vec<(String, shardc_ir::TensorData)> = report
            .tensors
            .iter()
            .flat_map(|(name, [m, p])| [(format!("model.{name}"), m.clone()), (format!("packages.{name}"), p.clone())])
            .collect();
        shardc::run::write_tensors(path, &tensors)?;
    }
    println!("packages    {} stages: {}", report.devices.len(), report.devices.join(" -> "));
    for o in &report.outputs {
        match o.max_diff {
            Some(d) => println!(
                "output      {}: max |diff| {d:.3e} (limit {:.3e}) {}",
                o.name,
                o.limit,
                if o.agrees() { "agrees" } else { "DIFFERS" }
            ),
            None => println!("output      {}: not produced by the packages", o.name),
        }
    }
    if !report.agrees() {
        let bad: Vec<String> = report
            .outputs
            .iter()
            .filter(|o| !o.agrees())
            .map(|o| match o.max_diff {
                Some(d) => format!("`{}` differs by {d:.3e}", o.name),
                None => format!("`{}` is not produced by the packages", o.name),
            })
            .collect();
        return Err(VerificationFailed(format!("the packages do not reproduce the model: {}", bad.join(", "))).into());
    }
    Ok(())
}

/// `shardc verify`: prompt logits within the tolerance and the same greedy tokens.
pub(crate) fn verify(
    model: &Path,
    out: &Path,
    ids: Vec<i64>,
    tokens: usize,
    tolerance: f64,
    min_agreement: f64,
    save: Option<&Path>,
) -> Result<()> {
    let r = shardc::verify::verify_tokens(model, out, &ids, tokens, tolerance, min_agreement)?;
    if let Some(path) = save {
        let [m, p] = &r.logits;
        let tensors = [("model.logits".to_string(), m.clone()), ("packages.logits".to_string(), p.clone())];
        shardc::run::write_tensors(path, &tensors)?;
    }
    println!("packages    {} stages: {}", r.devices.len(), r.devices.join(" -> "));
    println!("logits      max |diff| {:.3e} (limit {:.3e}, max |logit| {:.3})", r.max_diff, r.limit, r.max_logit);
    let agreement = r.agreement();
    let verdict = if r.model_tokens == r.package_tokens {
        "agree".to_string()
    } else if agreement >= r.min_agreement {
        format!("agree on the first {:.0}% (at least {:.0}% asked)", agreement * 100.0, r.min_agreement * 100.0)
    } else {
        format!("DIFFER after {:.0}% (at least {:.0}% asked)", agreement * 100.0, r.min_agreement * 100.0)
    };
    println!("greedy      {tokens} tokens {verdict}: model {:?}, packages {:?}", r.model_tokens, r.package_tokens);
    if !r.agrees() {
        return Err(VerificationFailed("the packages do not reproduce the model".into()).into());
    }
    Ok(())
}

pub(crate) fn run_tensors(
    args: &ModelArgs,
    inputs: &std::path::Path,
    outputs: Option<&std::path::Path>,
    json: bool,
) -> Result<()> {
    let model = open(args)?;
    if !model.has_weights {
        bail!("{}: a config.json alone has no weights to run; give the checkpoint folder", args.model.display());
    }
    if let Some(path) = outputs {
        shardc::emit::output::check_not_input(path, &[args.model.clone(), inputs.to_path_buf()])
            .map_err(|e| anyhow::anyhow!("--outputs {e}"))?;
    }
    let tensors = shardc::run::read_tensors(inputs)?;
    let start = Instant::now();
    let results = shardc::run::run_graph(model.graph, &model.weights_dir, tensors)?;
    let elapsed = start.elapsed();
    if let Some(path) = outputs {
        shardc::run::write_tensors(path, &results)?;
    }
    let describe = |t: &shardc_ir::TensorData| {
        let dims: Vec<String> = t.shape.iter().map(usize::to_string).collect();
        format!("{}[{}]", t.dtype, dims.join(", "))
    };
    if json {
        let report = serde_json::json!({
            "model": args.model.display().to_string(),
            "inputs": inputs.display().to_string(),
            "outputs": results.iter().map(|(n, t)| serde_json::json!({"name": n, "type": describe(t)})).collect::<Vec<_>>(),
            "written": outputs.map(|p| p.display().to_string()),
            "run_ms": elapsed.as_secs_f64() * 1e3,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("ran         {} in {:.1} ms", args.model.display(), elapsed.as_secs_f64() * 1e3);
        for (name, t) in &results {
            let values = t.to_f64_vec();
            let head: Vec<String> = values.iter().take(4).map(|v| format!("{v:.6}")).collect();
            let more = if values.len() > 4 { ", ..." } else { "" };
            println!("output      {name}: {} [{}{more}]", describe(t), head.join(", "));
        }
        if let Some(path) = outputs {
            println!("wrote       {}", path.display());
        }
    }
    Ok(())
}

pub(crate) fn run_model(
    args: &ModelArgs,
    input_ids: &[i64],
    max_new_tokens: usize,
    k: usize,
    json: bool,
) -> Result<()> {
    let model = open(args)?;
    if !model.has_weights {
        bail!("{}: a config.json alone has no weights to run; give the checkpoint folder", args.model.display());
    }
    let r = shardc::run::language_model(model, input_ids, max_new_tokens, k)?;
    let (vocab, top, continuation, kv_cache) = (r.vocab, r.top, r.generated, r.kv_cache);
    let (prefill, generation) = (r.prefill, r.generation);
    if json {
        let report = serde_json::json!({
            "model": args.model.display().to_string(),
            "input_ids": input_ids,
            "vocab": vocab,
            "kv_cache": kv_cache,
            "top_k": top.iter().map(|(id, logit)| serde_json::json!({"id": id, "logit": logit})).collect::<Vec<_>>(),
            "generated": continuation,
            "prefill_ms": prefill.as_secs_f64() * 1e3,
            "generation_ms": generation.as_secs_f64() * 1e3,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "prompt      {} tokens, vocabulary {vocab}, prefill {:.1} ms",
            input_ids.len(),
            prefill.as_secs_f64() * 1e3
        );
        println!("top {k} of the last position:");
        for (id, logit) in &top {
            println!("  {id:>8}  {logit:>12.6}");
        }
        if max_new_tokens > 0 {
            let ids: Vec<String> = continuation.iter().map(i64::to_string).collect();
            let how = if kv_cache { "KV cache" } else { "no cache: prefix re-run each step" };
            println!(
                "generated   {} ({} tokens, {:.1} ms, {how})",
                ids.join(","),
                continuation.len(),
                generation.as_secs_f64() * 1e3
            );
        }
    }
    Ok(())
}
