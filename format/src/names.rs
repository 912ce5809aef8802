//! Names that become paths: a device's name is its package's folder, and a package's
//! files are plain names inside it.

/// Longest device name.
pub const MAX_NAME: usize = 64;

/// Names the output folder uses for its own files, which no device may take.
pub const RESERVED_NAMES: [&str; 5] = ["client", "plan.json", "transmission_map.json", "report.svg", "balance.json"];

/// A device name is a plain folder name: 1 to 64 ASCII letters, digits, `-`, `_` and
/// `.`, not starting with `.` (so never `.` or `..`), and not a name the output folder
/// or the cluster file uses itself (`client`, `plan.json`, …), in any case.
pub fn check_name(name: &str) -> Result<(), String> {
    let shown: String = name.chars().take(MAX_NAME).collect();
    if name.is_empty() {
        return Err("a device needs a non-empty name".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!("device name `{shown}…` is longer than {MAX_NAME} characters"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(format!(
            "device name `{}` contains {c:?}: names are folder names of letters, digits, `-`, `_` and `.`",
            name.escape_debug()
        ));
    }
    if name.starts_with('.') {
        return Err(format!("device name `{name}` starts with `.`: names are plain, visible folder names"));
    }
    if let Some(r) = RESERVED_NAMES.iter().find(|r| r.eq_ignore_ascii_case(name)) {
        return Err(format!(
            "device name `{name}` is reserved (`{r}` is used by the output folder or the cluster file)"
        ));
    }
    Ok(())
}

/// A plain file name: no folder part, not hidden, not `.` or `..`.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0', ':'])
}
