//! `shardc report OUT [--measured RUN.json]`: report.svg redrawn from a compile's
//! plan.json and transmission_map.json, with what a run of its packages measured.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use shardc_format::map::TransmissionMap;
use shardc_format::plan::PlanReport;
use shardc_passes::calibrate::Run;

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = crate::inputs::read_text(path)?;
    serde_json::from_str(&text).with_context(|| format!("{}: not what a compile writes", path.display()))
}

/// Write `out/report.svg` (atomically); returns its path.
pub fn redraw(out: &Path, measured: Option<&Path>) -> anyhow::Result<PathBuf> {
    let report: PlanReport = read_json(&out.join("plan.json"))?;
    let map: TransmissionMap = read_json(&out.join("transmission_map.json"))?;
    let run = match measured {
        Some(path) => {
            let text = crate::inputs::read_text(path)?;
            let run = Run::parse(&text).map_err(|e| anyhow!("--measured {}: {}", path.display(), e.0))?;
            for s in &run.stages {
                if !report.stages.iter().any(|p| p.device == s.device) {
                    bail!(
                        "--measured {}: the run's device `{}` has no stage in {} (a run of other packages?)",
                        path.display(),
                        s.device,
                        out.join("plan.json").display()
                    );
                }
            }
            Some(run)
        }
        None => None,
    };
    let svg = crate::emit::svg::render(&report, &map, run.as_ref());
    let path = out.join("report.svg");
    shardc_format::files::write_atomically(&path, svg.as_bytes())
        .map_err(|e| anyhow!("{}: cannot write: {e}", path.display()))?;
    Ok(path)
}
