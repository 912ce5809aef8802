//! `report.svg`: per device, memory used against its budget and predicted time per
//! token, as bars readable at a glance.

use std::fmt::Write;

use shardc_passes::quantity::bytes_text;

use shardc_format::plan::PlanReport;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Draw the plan.
pub fn render(report: &PlanReport) -> String {
    let row = 56.0;
    let left = 170.0;
    let bar = 300.0;
    let gap = 60.0;
    let width = left + 2.0 * bar + gap + 40.0;
    let height = 90.0 + row * report.stages.len() as f64 + 40.0;
    let max_time = report.stages.iter().map(|s| s.decode_ms + s.link_decode_ms).fold(0.0f64, f64::max).max(1e-9);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let title = format!(
        "{} · {} · {:?} — prefill {:.1} ms, decode {:.2} ms/token, {:.2} tokens/s pipelined",
        report.model,
        report.strategy.name(),
        report.objective,
        report.predictions.prefill_ms,
        report.predictions.decode_ms_per_token,
        report.predictions.pipelined_tokens_per_s
    );
    let _ = writeln!(out, r#"<text x="10" y="22" font-size="14" font-weight="bold">{}</text>"#, escape(&title));
    let _ = writeln!(out, r#"<text x="{left}" y="55">memory used / budget</text>"#);
    let _ = writeln!(
        out,
        r#"<text x="{:.0}" y="55">decode time per token (compute + link to next)</text>"#,
        left + bar + gap
    );
    for (i, s) in report.stages.iter().enumerate() {
        let y = 75.0 + row * i as f64;
        let _ = writeln!(out, r#"<text x="10" y="{:.0}">{}. {}</text>"#, y + 16.0, i, escape(&s.device));
        let layers = s.layers.map_or(String::new(), |[a, b]| format!("layers {a}–{b}"));
        let _ = writeln!(
            out,
            r##"<text x="10" y="{:.0}" fill="#666" font-size="11">{}</text>"##,
            y + 32.0,
            escape(&layers)
        );
        let used = (s.memory_bytes / s.budget_bytes).clamp(0.0, 1.0);
        let colour = if used > 0.9 { "#d9534f" } else { "#4a90d9" };
        let _ = writeln!(out, r##"<rect x="{left}" y="{y:.0}" width="{bar}" height="22" fill="#eee" stroke="#999"/>"##);
        // Standby units: the memory they add, lighter, after the stage's own.
        let mut held_text = String::new();
        if let Some(h) = &s.held {
            let with = (h.memory_bytes / s.budget_bytes).clamp(used, 1.0);
            let _ = writeln!(
                out,
                r##"<rect x="{:.1}" y="{y:.0}" width="{:.1}" height="22" fill="#b8d4f0"/>"##,
                left + bar * used,
                bar * (with - used)
            );
            held_text = format!(", {} with standby units", bytes_text(h.memory_bytes));
        }
        let _ = writeln!(out, r#"<rect x="{left}" y="{y:.0}" width="{:.1}" height="22" fill="{colour}"/>"#, bar * used);
        let _ = writeln!(
            out,
            r#"<text x="{left}" y="{:.0}" font-size="11">{} / {} ({:.0}%){}</text>"#,
            y + 36.0,
            bytes_text(s.memory_bytes),
            bytes_text(s.budget_bytes),
            used * 100.0,
            escape(&held_text)
        );
        let x = left + bar + gap;
        let compute = bar * s.decode_ms / max_time;
        let link = bar * s.link_decode_ms / max_time;
        let _ = writeln!(out, r##"<rect x="{x:.0}" y="{y:.0}" width="{compute:.1}" height="22" fill="#5cb85c"/>"##);
        let _ = writeln!(
            out,
            r##"<rect x="{:.1}" y="{y:.0}" width="{link:.1}" height="22" fill="#f0ad4e"/>"##,
            x + compute
        );
        let _ = writeln!(
            out,
            r#"<text x="{x:.0}" y="{:.0}" font-size="11">{:.3} ms + {:.3} ms</text>"#,
            y + 36.0,
            s.decode_ms,
            s.link_decode_ms
        );
    }
    let y = height - 20.0;
    let _ = writeln!(
        out,
        r##"<rect x="{left}" y="{:.0}" width="12" height="12" fill="#5cb85c"/><text x="{:.0}" y="{y:.0}">compute</text>"##,
        y - 11.0,
        left + 16.0
    );
    let _ = writeln!(
        out,
        r##"<rect x="{:.0}" y="{:.0}" width="12" height="12" fill="#f0ad4e"/><text x="{:.0}" y="{y:.0}">link</text>"##,
        left + 90.0,
        y - 11.0,
        left + 106.0
    );
    out.push_str("</svg>\n");
    out
}
