//! `report.svg`: the transmission map (stages as boxes, every pair of endpoints that
//! exchange tensors as an arrow, long-range ones included), predicted against measured
//! time per stage (`shardc report OUT --measured RUN.json`), and no text cut off.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::net::{compile, shardc_run};
use common::{fixture_dir, shardc_text};

/// Every `<text>` element: (x, font size, text).
fn texts(svg: &str) -> Vec<(f64, f64, String)> {
    let mut out = Vec::new();
    for part in svg.split("<text ").skip(1) {
        let attr = |name: &str| -> f64 {
            let at = part.find(&format!("{name}=\"")).unwrap_or_else(|| panic!("no {name} in {part}")) + name.len() + 2;
            part[at..at + part[at..].find('"').unwrap()].parse().unwrap()
        };
        let body = &part[part.find('>').unwrap() + 1..part.find("</text>").unwrap()];
        let text = body.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&amp;", "&");
        out.push((attr("x"), attr("font-size"), text));
    }
    out
}

fn svg_width(svg: &str) -> f64 {
    let at = svg.find("width=\"").unwrap() + 7;
    svg[at..at + svg[at..].find('"').unwrap()].parse().unwrap()
}

/// No text runs past the picture's edges, at 0.6 em a character (DejaVu Sans, the
/// common sans-serif face, averages 0.55).
fn assert_nothing_cut_off(svg: &str) {
    let width = svg_width(svg);
    for (x, size, text) in texts(svg) {
        let w = text.chars().count() as f64 * size * 0.6;
        assert!(x >= 0.0 && x + w <= width, "`{text}` at {x} ({w} wide) in a {width}-wide picture");
    }
}

#[test]
fn the_report_draws_the_transmission_map_and_fits_its_texts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    compile(&fixture_dir("gpt2").join("hf"), &out, &[]);
    let svg = std::fs::read_to_string(out.join("report.svg")).unwrap();
    let map: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("transmission_map.json")).unwrap()).unwrap();
    let stages: Vec<&str> = map["stages"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_eq!(stages.len(), 3);
    // A box for the client sending, each stage and the client receiving.
    assert_eq!(svg.matches(r#"class="endpoint""#).count(), stages.len() + 2);
    for s in &stages {
        assert!(texts(&svg).iter().any(|(_, _, t)| t == s), "no box for {s}");
    }
    // One arrow per pair of endpoints that exchange tensors (the client sending first,
    // receiving last): between neighbours a line, else an arc, marked long-range when
    // a long-range tensor goes that way.
    let position = |name: &str, receiving: bool| match name {
        "client" if receiving => stages.len() + 1,
        "client" => 0,
        d => stages.iter().position(|s| *s == d).unwrap() + 1,
    };
    let (mut pairs, mut arcs, mut long) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for t in map["transfers"].as_array().unwrap() {
        for to in t["to"].as_array().unwrap() {
            let pair = (position(t["from"].as_str().unwrap(), false), position(to.as_str().unwrap(), true));
            if pair.1 > pair.0 + 1 {
                arcs.insert(pair);
                if t["kind"] == "long-range" {
                    long.insert(pair);
                }
            }
            pairs.insert(pair);
        }
    }
    assert!(!long.is_empty(), "gpt2 on three devices sends long-range tensors");
    assert_eq!(svg.matches(r#"class="transfer"#).count(), pairs.len(), "{pairs:?}");
    assert_eq!(svg.matches("<path class=\"transfer").count(), arcs.len(), "{arcs:?}");
    assert_eq!(svg.matches(r#"class="transfer long-range""#).count(), long.len());
    assert!(!svg.contains("measured"), "no run was given");
    assert_nothing_cut_off(&svg);
}

#[test]
fn a_long_model_name_is_not_cut_off() {
    // A 70B plan: the title names an 80-layer model and its figures.
    let config = common::root().join("fixtures/configs/llama-3-70b/config.json");
    let devices = common::root().join("fixtures/devices/edge-16.toml");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("plan");
    let (code, _, stderr) = shardc_text(&[
        "plan",
        config.to_str().unwrap(),
        "--devices",
        devices.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = shardc_text(&["report", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let svg = std::fs::read_to_string(out.join("report.svg")).unwrap();
    assert!(texts(&svg)[0].2.contains("80 layers"), "{}", texts(&svg)[0].2);
    assert_nothing_cut_off(&svg);
}

fn run(out: &Path) -> std::path::PathBuf {
    let o = std::process::Command::new(shardc_run())
        .arg("local")
        .arg(out)
        .args(["--input-ids", "1,2,3,4,5,6,7,8", "--max-new-tokens", "8", "--json", "--no-balance"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let file = out.with_extension("run.json");
    std::fs::write(&file, &o.stdout).unwrap();
    file
}

#[test]
fn report_measured_draws_what_a_run_measured_beside_the_prediction() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    compile(&fixture_dir("llama").join("hf"), &out, &[]);
    let run_file = run(&out);
    let before = std::fs::read(out.join("report.svg")).unwrap();
    let (code, stdout, stderr) =
        shardc_text(&["report", out.to_str().unwrap(), "--measured", run_file.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("report.svg"), "{stdout}");
    let svg = std::fs::read_to_string(out.join("report.svg")).unwrap();
    assert_ne!(svg.as_bytes(), &before[..]);
    // A measured bar and text per stage (every stage decoded).
    assert_eq!(svg.matches(r#"class="measured""#).count(), 3);
    assert_eq!(texts(&svg).iter().filter(|(_, _, t)| t.starts_with("measured (8 + 8 tokens): ")).count(), 3);
    assert_nothing_cut_off(&svg);
    // The same again: the same bytes.
    let (code, _, _) = shardc_text(&["report", out.to_str().unwrap(), "--measured", run_file.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_eq!(std::fs::read_to_string(out.join("report.svg")).unwrap(), svg);
    // A run of other devices, or no compile output.
    let other = dir.path().join("other.json");
    std::fs::write(&other, std::fs::read_to_string(&run_file).unwrap().replace("\"dev-c\"", "\"dev-z\"")).unwrap();
    let (code, _, stderr) = shardc_text(&["report", out.to_str().unwrap(), "--measured", other.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("the run's device `dev-z` has no stage in"), "{stderr}");
    let (code, _, stderr) = shardc_text(&["report", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("plan.json") && stderr.contains("cannot read"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().contains("partial")), "{left:?}");
}
