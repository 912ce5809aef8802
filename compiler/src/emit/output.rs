//! Where a compile may write: the output folder is checked against the inputs before
//! anything is written, and only what shardc wrote itself is ever replaced or removed.
//!
//! - `OUT` may not be, contain or lie inside a model input (the model file or folder,
//!   a weight file, the device profile), after following symbolic links.
//! - An existing `OUT` is replaced (with `--force`) only when it is empty or is a
//!   previous compile's output: `plan.json`, `transmission_map.json`, optional
//!   `report.svg` and `balance.json`, and package folders (each with `manifest.json`).
//! - The package is written into `.OUT.partial-PID` beside `OUT` and renamed into place;
//!   errors name `OUT`, not the temporary folder. Leftover `.OUT.partial-N` and
//!   `.OUT.old-N` folders of killed compiles are removed, nothing else.

use std::path::{Component, Path, PathBuf};

/// Files a compile writes at the top of `OUT`.
pub const TOP_FILES: [&str; 4] = ["plan.json", "transmission_map.json", "report.svg", "balance.json"];

/// `path` made absolute with symbolic links resolved, for a path that may not exist
/// yet: its longest existing ancestor is canonicalised and the rest appended (the rest
/// may not step up with `..`).
pub fn resolve(path: &Path) -> Result<PathBuf, String> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| format!("cannot read the working folder: {e}"))?.join(path)
    };
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return Ok(out);
        }
        match (existing.parent(), existing.components().next_back()) {
            (Some(parent), Some(Component::Normal(name))) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            (_, Some(Component::ParentDir)) | (_, Some(Component::CurDir)) => {
                return Err(format!("{}: `..` or `.` after a folder that does not exist", path.display()))
            }
            _ => return Err(format!("{}: no part of the path exists", path.display())),
        }
    }
}

/// Refuse an `out` that is, contains or lies inside one of `inputs`.
pub fn check_not_input(out: &Path, inputs: &[PathBuf]) -> Result<(), String> {
    let o = resolve(out)?;
    for input in inputs {
        let Ok(i) = input.canonicalize() else { continue };
        let what = if i == o {
            "is"
        } else if i.starts_with(&o) {
            "contains"
        } else if o.starts_with(&i) {
            "lies inside"
        } else {
            continue;
        };
        return Err(format!(
            "{}: the output {what} the input {}; choose an output apart from the model, the device profile and other inputs",
            out.display(),
            input.display()
        ));
    }
    Ok(())
}

/// Whether `out` may be replaced: it is an empty folder or a previous compile's output.
pub fn check_replaceable(out: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(out).map_err(|e| format!("{}: {e}", out.display()))?;
    if !meta.is_dir() {
        return Err(format!("{}: exists and is not a folder; shardc replaces only its own output", out.display()));
    }
    let entries: Vec<_> = std::fs::read_dir(out)
        .map_err(|e| format!("{}: cannot read: {e}", out.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: cannot read: {e}", out.display()))?;
    if entries.is_empty() {
        return Ok(());
    }
    let foreign = |name: &str| {
        format!(
            "{}: holds `{name}`, which a compile does not write; shardc replaces only an empty folder or its own output (remove it yourself if it is meant to go)",
            out.display()
        )
    };
    let mut tops = 0;
    for e in &entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let kind = e.file_type().map_err(|err| format!("{}: {err}", e.path().display()))?;
        if kind.is_file() && TOP_FILES.contains(&name.as_str()) {
            tops += usize::from(name == "plan.json" || name == "transmission_map.json");
        } else if kind.is_dir()
            && shardc_passes::devices::check_name(&name).is_ok()
            && e.path().join("manifest.json").is_file()
        {
            let inner = std::fs::read_dir(e.path()).map_err(|err| format!("{}: {err}", e.path().display()))?;
            for f in inner.flatten() {
                let n = f.file_name().to_string_lossy().into_owned();
                if !f.file_type().is_ok_and(|t| t.is_file()) || !PACKAGE_FILES.contains(&n.as_str()) {
                    return Err(foreign(&format!("{name}/{n}")));
                }
            }
        } else {
            return Err(foreign(&name));
        }
    }
    if tops != 2 {
        return Err(format!(
            "{}: not a shardc output (no plan.json and transmission_map.json); shardc replaces only an empty folder or its own output",
            out.display()
        ));
    }
    Ok(())
}

/// Files a compile writes into a package folder.
pub const PACKAGE_FILES: [&str; 6] =
    ["manifest.json", "shard.ir", "shard.onnx", "weights.safetensors", "standby.ir", "standby.json"];

/// `.BASE.partial-PID` / `.BASE.old-PID`: the compile's own temporary folders.
pub fn is_own_temporary(name: &str, base: &str) -> bool {
    [".partial-", ".old-"].iter().any(|kind| {
        name.strip_prefix('.')
            .and_then(|n| n.strip_prefix(base))
            .and_then(|n| n.strip_prefix(kind))
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// A path inside the temporary folder, named as it will be inside `out`.
pub fn shown(path: &Path, tmp: &Path, out: &Path) -> PathBuf {
    match path.strip_prefix(tmp) {
        Ok(rest) if rest.as_os_str().is_empty() => out.to_path_buf(),
        Ok(rest) => out.join(rest),
        Err(_) => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_temporaries_only() {
        assert!(is_own_temporary(".out.partial-123", "out"));
        assert!(is_own_temporary(".out.old-9", "out"));
        assert!(!is_own_temporary(".out.partial-", "out"));
        assert!(!is_own_temporary(".out.partial-12x", "out"));
        assert!(!is_own_temporary(".outer.partial-1", "out"));
        assert!(!is_own_temporary("out.partial-1", "out"));
    }

    #[test]
    fn resolves_paths_that_do_not_exist_yet() {
        let dir = std::env::temp_dir().join(format!("shardc-resolve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let canon = dir.canonicalize().unwrap();
        assert_eq!(resolve(&dir.join("a/b")).unwrap(), canon.join("a/b"));
        assert!(resolve(&dir.join("a/../b")).is_err());
        assert_eq!(resolve(&dir.join("../x")).unwrap(), canon.parent().unwrap().join("x"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
