//! The text `shardc plan`, `compile` and `compare` print: renderings of what the
//! partition pipeline (`shardc_passes::partition`) returns.

use std::fmt::Write;

use shardc_format::plan::PlanReport;
use shardc_passes::partition::CompareRow;
use shardc_passes::plan::Objective;
use shardc_passes::quantity::bytes_text;

fn ms(x: f64) -> String {
    if x >= 1000.0 {
        format!("{:.2} s", x / 1e3)
    } else {
        format!("{x:.2} ms")
    }
}

/// The text `shardc plan` prints for a plan.
pub fn plan_text(report: &PlanReport, timings: bool) -> String {
    let mut out = String::new();
    let s = &report.solver;
    let status = if s.optimal {
        "proven optimal".to_string()
    } else if let Some(g) = s.gap {
        format!("gap {:.2}%", g * 100.0)
    } else {
        "heuristic".to_string()
    };
    let time = if timings { format!(", {:.1} ms", s.time_ms) } else { String::new() };
    let _ = writeln!(
        out,
        "plan        {} ({}, {status}{time}), objective {:?}",
        report.strategy.name(),
        s.engine,
        report.objective
    );
    let w = &report.workload;
    let _ = writeln!(
        out,
        "workload    batch {}, prompt {} tokens, context {} tokens, {} units",
        w.batch, w.prompt_len, w.max_context, report.units
    );
    if let Some(q) = &report.quantization {
        let groups = match q.group_size {
            Some(g) => format!("groups of {g}"),
            None => "per output channel".into(),
        };
        let _ = writeln!(
            out,
            "weights     {} ({groups}, {} scales{}): {} matrices, {} -> {}",
            q.scheme,
            q.scale_dtype,
            if q.embeddings { ", embedding and head too" } else { "" },
            q.weights,
            bytes_text(q.bytes_before as f64),
            bytes_text(q.bytes_after as f64)
        );
    }
    if let Some(c) = &report.calibration {
        let factors: Vec<String> = c
            .devices
            .iter()
            .map(|d| format!("{} prefill x{:.2}, decode x{:.2}", d.device, d.prefill_factor, d.decode_factor))
            .collect();
        let _ = writeln!(
            out,
            "calibrated  from a run of {} + {} tokens: {}{}",
            c.prompt_tokens,
            c.new_tokens,
            factors.join("; "),
            if c.uncalibrated.is_empty() {
                String::new()
            } else {
                format!(" (as profiled: {})", c.uncalibrated.join(", "))
            }
        );
    }
    let _ = writeln!(
        out,
        "{:<5} {:<14} {:<36} {:<7} {:<24} {:>11} {:>12} {:>22}",
        "stage", "device", "units", "layers", "memory / budget", "prefill", "decode/token", "link to next (pre/dec)"
    );
    for (i, st) in report.stages.iter().enumerate() {
        let units = if st.first_unit == st.last_unit {
            st.first_unit.clone()
        } else {
            format!("{} .. {}", st.first_unit, st.last_unit)
        };
        let layers =
            st.layers.map_or("-".to_string(), |[a, b]| if a == b { a.to_string() } else { format!("{a}-{b}") });
        let link = if i + 1 < report.stages.len() {
            format!("{} / {}", ms(st.link_prefill_ms), ms(st.link_decode_ms))
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "{:<5} {:<14} {:<36} {:<7} {:<24} {:>11} {:>12} {:>22}",
            i,
            st.device,
            units,
            layers,
            format!("{} / {}", bytes_text(st.memory_bytes), bytes_text(st.budget_bytes)),
            ms(st.prefill_ms),
            ms(st.decode_ms),
            link
        );
    }
    for (i, st) in report.stages.iter().enumerate() {
        if let Some(h) = &st.held {
            let _ = writeln!(
                out,
                "standby     stage {i} holds {} .. {} ({} / {})",
                h.first_unit,
                h.last_unit,
                bytes_text(h.memory_bytes),
                bytes_text(st.budget_bytes)
            );
        }
    }
    let p = &report.predictions;
    if report.generative {
        let _ = writeln!(out, "prefill     {}", ms(p.prefill_ms));
        let _ = writeln!(
            out,
            "decode      {}/token ({:.2} tokens/s for one request)",
            ms(p.decode_ms_per_token),
            1e3 / p.decode_ms_per_token
        );
        let _ = writeln!(out, "pipelined   {:.2} tokens/s with requests in flight", p.pipelined_tokens_per_s);
    } else {
        let _ = writeln!(out, "forward     {} for one request (one pass, no decode steps)", ms(p.prefill_ms));
        let _ = writeln!(out, "pipelined   {:.2} requests/s with requests in flight", p.pipelined_tokens_per_s);
    }
    out
}

/// The text `shardc compare` prints.
pub fn compare_text(rows: &[CompareRow], objective: Objective) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "objective {objective:?}");
    let _ = writeln!(
        out,
        "{:<13} {:<13} {:>6} {:>12} {:>14} {:>16} {:>10}",
        "strategy", "engine", "stages", "prefill", "decode/token", "pipelined tok/s", "vs best"
    );
    for r in rows {
        match (r.prefill_ms, r.decode_ms_per_token, r.pipelined_tokens_per_s, r.ratio_to_best) {
            (Some(p), Some(d), Some(t), Some(x)) => {
                let _ = writeln!(
                    out,
                    "{:<13} {:<13} {:>6} {:>12} {:>14} {:>16.2} {:>9.3}x",
                    r.strategy.name(),
                    r.engine,
                    r.stages,
                    ms(p),
                    ms(d),
                    t,
                    x
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "{:<13} {:<13} {:>6} {}",
                    r.strategy.name(),
                    r.engine,
                    r.stages,
                    r.note.clone().unwrap_or_else(|| "does not fit".into())
                );
            }
        }
    }
    out
}

/// `compile --json`: the plan's stages with each device's files (path relative to the
/// output, size, blake3), the files at the top of the output, predictions and solver
/// status.
pub fn compile_json(out: &std::path::Path, summary: &crate::emit::Summary) -> serde_json::Result<serde_json::Value> {
    let report = &summary.report;
    let stages = report
        .stages
        .iter()
        .map(|stage| {
            let mut value = serde_json::to_value(stage)?;
            let prefix = format!("{}/", stage.device);
            let files: Vec<_> = summary.files.iter().filter(|f| f.path.starts_with(&prefix)).collect();
            value["files"] = serde_json::to_value(files)?;
            Ok(value)
        })
        .collect::<serde_json::Result<Vec<_>>>()?;
    let top: Vec<_> = summary.files.iter().filter(|f| !f.path.contains('/')).collect();
    Ok(serde_json::json!({
        "out": out.display().to_string(),
        "model": report.model,
        "devices": report.devices,
        "strategy": report.strategy,
        "objective": report.objective,
        "workload": report.workload,
        "stages": stages,
        "files": top,
        "weight_bytes": summary.weight_bytes,
        "predictions": report.predictions,
        "solver": report.solver,
    }))
}

/// The text `shardc compare --quantize` adds: the exact plan per way of storing the
/// weights.
pub fn weights_text(rows: &[shardc_passes::partition::WeightsRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:>12} {:>12} {:>6} {:>12} {:>14} {:>16}",
        "weights", "weight bytes", "needs", "stages", "prefill", "decode/token", "pipelined tok/s"
    );
    for r in rows {
        let figures = match (r.prefill_ms, r.decode_ms_per_token, r.pipelined_tokens_per_s) {
            (Some(p), Some(d), Some(t)) => format!("{:>6} {:>12} {:>14} {:>16.2}", r.stages, ms(p), ms(d), t),
            _ => "does not fit".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<8} {:>12} {:>12} {figures}",
            r.weights,
            bytes_text(r.weight_bytes),
            bytes_text(r.need_bytes)
        );
    }
    out
}
