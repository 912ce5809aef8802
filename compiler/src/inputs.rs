//! The files a compile reads: recorded in `plan.json` by content (so the output is the
//! same wherever the inputs lie) and listed by path in a Makefile-syntax dependency
//! file (`--depfile`, so a build system re-runs the compile when one changes).

use std::path::{Path, PathBuf};

use shardc_format::plan::{Covers, InputFile};

use crate::frontend::hf::Digest;

/// One file read: where (for the depfile) and what (for `plan.json`).
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    pub path: PathBuf,
    pub record: InputFile,
}

impl Input {
    /// A file of a checkpoint folder the model names, digest as read.
    pub fn named(dir: &Path, role: &str, d: &Digest, covers: Covers) -> Input {
        Input {
            path: dir.join(&d.file),
            record: InputFile {
                role: role.into(),
                name: Some(d.file.clone()),
                bytes: d.bytes,
                covers,
                blake3: Some(d.blake3.clone()),
            },
        }
    }

    /// A whole file given on the command line (its name is not recorded).
    pub fn given(path: &Path, role: &str, bytes: &[u8]) -> Input {
        Input {
            path: path.to_path_buf(),
            record: InputFile {
                role: role.into(),
                name: None,
                bytes: bytes.len() as u64,
                covers: Covers::File,
                blake3: Some(blake3::hash(bytes).to_hex().to_string()),
            },
        }
    }
}

/// A text file given on the command line, read whole (bounded); the error names it.
pub fn read_text(path: &Path) -> anyhow::Result<String> {
    shardc_format::files::read_text(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))
}

/// The device profile at `path`, read once: its record and the profile.
pub fn profile(path: &Path) -> anyhow::Result<(Input, shardc_passes::devices::Profile)> {
    let text = read_text(path)?;
    let profile = shardc_passes::devices::parse(&text, path)?;
    Ok((Input::given(path, "devices", text.as_bytes()), profile))
}

/// How the profile is named in `plan.json`: its devices, never its file's name.
pub fn profile_name(profile: &shardc_passes::devices::Profile) -> String {
    let names: Vec<&str> = profile.devices.iter().map(|d| d.name.as_str()).collect();
    format!("{} device{}: {}", names.len(), if names.len() == 1 { "" } else { "s" }, names.join(", "))
}

/// Why a depfile cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum DepfileError {
    #[error("--depfile: the path `{0}` holds a line break, which a Makefile dependency list cannot spell")]
    Unspellable(String),
    #[error("--depfile {}: {message}", path.display())]
    Io { path: PathBuf, message: String },
}

/// One path in Makefile syntax, as compilers write depfiles: spaces and `#` escaped
/// with a backslash, `$` doubled.
fn make_escape(path: &Path) -> Result<String, DepfileError> {
    let text = path.to_string_lossy();
    if text.contains(['\n', '\r']) {
        return Err(DepfileError::Unspellable(text.escape_debug().to_string()));
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            ' ' | '\t' | '#' => {
                out.push('\\');
                out.push(c);
            }
            '$' => out.push_str("$$"),
            _ => out.push(c),
        }
    }
    Ok(out)
}

/// The depfile text: `target: dep \` lines, every input once, in the order read.
pub fn depfile_text(target: &Path, inputs: &[Input]) -> Result<String, DepfileError> {
    let mut text = make_escape(target)? + ":";
    let mut seen = std::collections::BTreeSet::new();
    for input in inputs {
        if seen.insert(input.path.clone()) {
            text.push_str(" \\\n  ");
            text.push_str(&make_escape(&input.path)?);
        }
    }
    text.push('\n');
    Ok(text)
}

/// Write the depfile at `path` (through a temporary file renamed into place, so a
/// build system never reads half of one).
pub fn write_depfile(path: &Path, target: &Path, inputs: &[Input]) -> Result<(), DepfileError> {
    let text = depfile_text(target, inputs)?;
    shardc_format::files::write_atomically(path, text.as_bytes())
        .map_err(|e| DepfileError::Io { path: path.to_path_buf(), message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(path: &str) -> Input {
        Input::given(Path::new(path), "config", b"{}")
    }

    #[test]
    fn depfiles_escape_what_make_reads_specially() {
        let text = depfile_text(
            Path::new("out dir/plan.json"),
            &[input("a b/config.json"), input("c$/#x"), input("a b/config.json")],
        )
        .unwrap();
        assert_eq!(text, "out\\ dir/plan.json: \\\n  a\\ b/config.json \\\n  c$$/\\#x\n");
        let err = depfile_text(Path::new("out"), &[input("bad\nname")]).unwrap_err();
        assert!(err.to_string().contains("line break"), "{err}");
    }
}
