//! `report.svg`: per device, memory used against its budget and time per token —
//! predicted, and measured when a run is given (`shardc report OUT --measured RUN.json`)
//! — as bars readable at a glance; below, the transmission map: the client and the
//! stages as boxes along the model, and what each sends to which, arrows between
//! neighbours and arcs over the stages for long-range tensors.
//!
//! Every text is measured (an estimate from its length, generous for a sans-serif
//! face) and the picture is made wide enough for the longest, so none is cut off.

use std::collections::BTreeMap;
use std::fmt::Write;

use shardc_format::map::{TransferKind, TransmissionMap};
use shardc_format::plan::PlanReport;
use shardc_passes::calibrate::Run;
use shardc_passes::quantity::bytes_text;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Width a text takes at `size` px, estimated generously (0.62 of the size per char).
pub fn text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * size * 0.62
}

/// The SVG under construction, and the rightmost point any text reaches.
struct Canvas {
    body: String,
    right: f64,
}

impl Canvas {
    fn text(&mut self, x: f64, y: f64, size: f64, extra: &str, text: &str) {
        self.right = self.right.max(x + text_width(text, size));
        let _ = writeln!(self.body, r#"<text x="{x:.1}" y="{y:.1}" font-size="{size}"{extra}>{}</text>"#, escape(text));
    }

    fn raw(&mut self, s: &str) {
        self.body.push_str(s);
        self.body.push('\n');
    }
}

/// Draw the plan, its map and (when given) what a run measured.
pub fn render(report: &PlanReport, map: &TransmissionMap, measured: Option<&Run>) -> String {
    let mut c = Canvas { body: String::new(), right: 0.0 };
    let title = format!(
        "{} · {} · {:?} — prefill {:.1} ms, decode {:.2} ms/token, {:.2} tokens/s pipelined",
        report.model,
        report.strategy.name(),
        report.objective,
        report.predictions.prefill_ms,
        report.predictions.decode_ms_per_token,
        report.predictions.pipelined_tokens_per_s
    );
    c.text(10.0, 22.0, 14.0, r#" font-weight="bold""#, &title);
    let y = bars(&mut c, report, measured, 40.0);
    let bottom = transmission(&mut c, report, map, y + 30.0);
    let width = (c.right + 20.0).ceil();
    let height = (bottom + 20.0).ceil();
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        "<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" \
         orient=\"auto-start-reverse\"><path d=\"M 0 0 L 10 5 L 0 10 z\" fill=\"#555\"/></marker></defs>"
    );
    out.push_str(&c.body);
    out.push_str("</svg>\n");
    out
}

/// Memory and time bars per stage, from `top`; returns where they end.
fn bars(c: &mut Canvas, report: &PlanReport, measured: Option<&Run>, top: f64) -> f64 {
    let row = if measured.is_some() { 72.0 } else { 56.0 };
    let names: Vec<String> = report.stages.iter().enumerate().map(|(i, s)| format!("{i}. {}", s.device)).collect();
    let left = names.iter().map(|n| text_width(n, 13.0)).fold(150.0, f64::max) + 20.0;
    let (bar, gap) = (300.0, 60.0);
    let run_of = |device: &str| measured.and_then(|r| r.stages.iter().find(|s| s.device == device));
    let max_time = report
        .stages
        .iter()
        .map(|s| (s.decode_ms + s.link_decode_ms).max(run_of(&s.device).and_then(|m| m.decode_ms).unwrap_or(0.0)))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    c.text(left, top + 15.0, 13.0, "", "memory used / budget");
    let heading = if measured.is_some() {
        "decode time per token: predicted (compute + link to next), measured"
    } else {
        "decode time per token (compute + link to next)"
    };
    c.text(left + bar + gap, top + 15.0, 13.0, "", heading);
    for (i, s) in report.stages.iter().enumerate() {
        let y = top + 35.0 + row * i as f64;
        c.text(10.0, y + 16.0, 13.0, "", &names[i]);
        let layers = s.layers.map_or(String::new(), |[a, b]| format!("layers {a}–{b}"));
        c.text(10.0, y + 32.0, 11.0, r##" fill="#666""##, &layers);
        let used = (s.memory_bytes / s.budget_bytes).clamp(0.0, 1.0);
        let colour = if used > 0.9 { "#d9534f" } else { "#4a90d9" };
        c.raw(&format!(r##"<rect x="{left:.1}" y="{y:.1}" width="{bar}" height="22" fill="#eee" stroke="#999"/>"##));
        // Standby units: the memory they add, lighter, after the stage's own.
        let mut held_text = String::new();
        if let Some(h) = &s.held {
            let with = (h.memory_bytes / s.budget_bytes).clamp(used, 1.0);
            c.raw(&format!(
                r##"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="22" fill="#b8d4f0"/>"##,
                left + bar * used,
                bar * (with - used)
            ));
            held_text = format!(", {} with standby units", bytes_text(h.memory_bytes));
        }
        c.raw(&format!(r#"<rect x="{left:.1}" y="{y:.1}" width="{:.1}" height="22" fill="{colour}"/>"#, bar * used));
        let memory = format!(
            "{} / {} ({:.0}%){held_text}",
            bytes_text(s.memory_bytes),
            bytes_text(s.budget_bytes),
            used * 100.0
        );
        c.text(left, y + 36.0, 11.0, "", &memory);
        let x = left + bar + gap;
        let (compute, link) = (bar * s.decode_ms / max_time, bar * s.link_decode_ms / max_time);
        c.raw(&format!(r##"<rect x="{x:.1}" y="{y:.1}" width="{compute:.1}" height="22" fill="#5cb85c"/>"##));
        c.raw(&format!(r##"<rect x="{:.1}" y="{y:.1}" width="{link:.1}" height="22" fill="#f0ad4e"/>"##, x + compute));
        let predicted = format!(
            "{:.3} ms + {:.3} ms; prefill {:.1} ms + {:.1} ms",
            s.decode_ms, s.link_decode_ms, s.prefill_ms, s.link_prefill_ms
        );
        c.text(x, y + 36.0, 11.0, "", &predicted);
        if let Some(r) = measured {
            let text = match run_of(&s.device) {
                Some(m) => {
                    let ran = if m.units[0] != s.first_unit || m.units[1] != s.last_unit {
                        format!(" (ran {} .. {})", m.units[0], m.units[1])
                    } else {
                        String::new()
                    };
                    if let Some(d) = m.decode_ms {
                        let w = bar * d / max_time;
                        c.raw(&format!(
                            r##"<rect class="measured" x="{x:.1}" y="{:.1}" width="{w:.1}" height="10" fill="#8e6bbf"/>"##,
                            y + 42.0
                        ));
                    }
                    let decode = m.decode_ms.map_or("no decode step".to_string(), |d| format!("{d:.3} ms"));
                    format!(
                        "measured ({} + {} tokens): {decode}; prefill {:.1} ms{ran}",
                        r.prompt_tokens, r.new_tokens, m.prefill_ms
                    )
                }
                None => "measured: not in the run".to_string(),
            };
            c.text(x, y + 66.0, 11.0, r##" fill="#5a3d8a""##, &text);
        }
    }
    let y = top + 35.0 + row * report.stages.len() as f64 + 10.0;
    c.raw(&format!(r##"<rect x="{left:.1}" y="{:.1}" width="12" height="12" fill="#5cb85c"/>"##, y - 11.0));
    c.text(left + 16.0, y, 13.0, "", "compute");
    c.raw(&format!(r##"<rect x="{:.1}" y="{:.1}" width="12" height="12" fill="#f0ad4e"/>"##, left + 90.0, y - 11.0));
    c.text(left + 106.0, y, 13.0, "", "link");
    if measured.is_some() {
        c.raw(&format!(
            r##"<rect x="{:.1}" y="{:.1}" width="12" height="12" fill="#8e6bbf"/>"##,
            left + 150.0,
            y - 11.0
        ));
        c.text(left + 166.0, y, 13.0, "", "measured");
    }
    y
}

/// What goes from one endpoint to another: tensors, bytes per token, any long-range.
type Arrow = (usize, f64, bool);

/// The transmission map from `top`: boxes for the client (sending, then receiving) and
/// each stage, arrows between neighbours, arcs above for the rest; one arrow per pair
/// of endpoints, labelled with its tensors and bytes per token. Returns where it ends.
fn transmission(c: &mut Canvas, report: &PlanReport, map: &TransmissionMap, top: f64) -> f64 {
    c.text(10.0, top, 13.0, r#" font-weight="bold""#, "transmission map (bytes per decoded token)");
    // Endpoints in order: 0 the client sending, 1..=n the stages, n + 1 the client
    // receiving.
    let n = map.stages.len();
    let index = |name: &str, receiving: bool| -> Option<usize> {
        if name == "client" {
            return Some(if receiving { n + 1 } else { 0 });
        }
        map.stages.iter().position(|s| s == name).map(|i| i + 1)
    };
    // (from, to) -> (tensors, bytes per token, any long-range).
    let mut arrows: BTreeMap<(usize, usize), Arrow> = BTreeMap::new();
    for t in &map.transfers {
        let Some(from) = index(t.from.name(), false) else { continue };
        for to in &t.to {
            let Some(to) = index(to.name(), true) else { continue };
            let e = arrows.entry((from, to)).or_insert((0, 0.0, false));
            e.0 += 1;
            e.1 += t.bytes_per_token;
            e.2 |= t.kind == TransferKind::LongRange;
        }
    }
    let label = |&(count, bytes, _): &Arrow| {
        format!("{count} tensor{}, {}", if count == 1 { "" } else { "s" }, bytes_text(bytes))
    };
    // Box texts: name and units.
    let mut boxes: Vec<(String, String)> = vec![("client".into(), "sends".into())];
    for (i, d) in map.stages.iter().enumerate() {
        let units = report.stages.get(i).map_or(String::new(), |s| format!("{} .. {}", s.first_unit, s.last_unit));
        boxes.push((d.clone(), units));
    }
    boxes.push(("client".into(), "receives".into()));
    // Gaps wide enough for the labels of the arrows between neighbours.
    let gap_after =
        |i: usize| -> f64 { arrows.get(&(i, i + 1)).map_or(60.0, |a| text_width(&label(a), 11.0) + 24.0).max(60.0) };
    let arcs: Vec<(&(usize, usize), &Arrow)> = arrows.iter().filter(|((a, b), _)| b > &(a + 1)).collect();
    let arc_height = |k: usize| 34.0 + 20.0 * k as f64;
    let box_top = top + 30.0 + arc_height(arcs.len()) + 10.0;
    let (box_h, mut x) = (44.0, 10.0);
    let mut spans = Vec::new();
    for (i, (name, units)) in boxes.iter().enumerate() {
        let w = text_width(name, 13.0).max(text_width(units, 11.0)) + 20.0;
        let fill = if i == 0 || i == n + 1 { "#f5f5f5" } else { "#e8f0fa" };
        c.raw(&format!(
            r##"<rect class="endpoint" x="{x:.1}" y="{box_top:.1}" width="{w:.1}" height="{box_h}" rx="4" fill="{fill}" stroke="#4a90d9"/>"##
        ));
        c.text(x + 10.0, box_top + 18.0, 13.0, "", name);
        c.text(x + 10.0, box_top + 35.0, 11.0, r##" fill="#666""##, units);
        spans.push((x, x + w));
        x += w + if i + 1 < boxes.len() { gap_after(i) } else { 0.0 };
    }
    let mid = box_top + box_h / 2.0;
    for ((a, b), v) in &arrows {
        if *b != a + 1 {
            continue;
        }
        let (x1, x2) = (spans[*a].1, spans[*b].0);
        c.raw(&format!(
            r##"<line class="transfer" x1="{x1:.1}" y1="{mid:.1}" x2="{x2:.1}" y2="{mid:.1}" stroke="#555" marker-end="url(#arrow)"/>"##
        ));
        c.text(x1 + 12.0, mid - 6.0, 11.0, "", &label(v));
    }
    // Arcs, the longest highest.
    let mut arcs = arcs;
    arcs.sort_by_key(|((a, b), _)| (b - a, *a));
    for (k, ((a, b), v)) in arcs.iter().enumerate() {
        let (x1, x2) = ((spans[*a].0 + spans[*a].1) / 2.0, (spans[*b].0 + spans[*b].1) / 2.0);
        let apex = box_top - arc_height(k + 1);
        let class = if v.2 { "transfer long-range" } else { "transfer" };
        c.raw(&format!(
            r##"<path class="{class}" d="M {x1:.1} {box_top:.1} C {x1:.1} {apex:.1}, {x2:.1} {apex:.1}, {x2:.1} {box_top:.1}" fill="none" stroke="#888" marker-end="url(#arrow)"/>"##
        ));
        // The curve's top is three quarters of the way to its control points.
        let text = label(v);
        let (tx, ty) =
            (((x1 + x2) / 2.0 - text_width(&text, 11.0) / 2.0).max(10.0), box_top - 0.75 * (box_top - apex) - 4.0);
        c.text(tx, ty, 11.0, "", &text);
    }
    box_top + box_h
}
