//! Reading files whose size nobody vouches for: every read is bounded, so a hostile or
//! mistaken path (a huge file, `/dev/zero`, a FIFO) ends in an error, never in an
//! allocation the machine cannot make or a read that never ends. And writing a file
//! whole, so that no reader ever sees half of one.

use std::io::{Read, Write};
use std::path::Path;

/// Largest text file shardc reads whole (configs, profiles, manifests, plans, IR).
pub const MAX_TEXT: u64 = 256 << 20;

/// Read at most `limit` bytes of `path`; a longer file is an `InvalidData` error that
/// says so.
pub fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    if f.metadata()?.is_dir() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "is a folder, not a file"));
    }
    let mut bytes = Vec::new();
    f.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than the {limit} bytes shardc reads from such a file"),
        ));
    }
    Ok(bytes)
}

/// [`read_bounded`] as UTF-8 text, at most [`MAX_TEXT`] bytes.
pub fn read_text(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read_bounded(path, MAX_TEXT)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not UTF-8 text: {e}")))
}

/// Write `bytes` to `path` through a temporary file beside it, synced and renamed into
/// place (removed again if anything fails): a reader sees the old file or the new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().ok_or_else(|| std::io::Error::other("names no file"))?;
    let tmp = path.with_file_name(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_too_long_or_not_a_file() {
        let dir = std::env::temp_dir().join(format!("shardc-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.txt");
        std::fs::write(&f, "hello").unwrap();
        assert_eq!(read_bounded(&f, 5).unwrap(), b"hello");
        assert!(read_bounded(&f, 4).unwrap_err().to_string().contains("larger than the 4 bytes"));
        assert!(read_text(&dir).is_err());
        std::fs::write(&f, [0xff, 0xfe]).unwrap();
        assert!(read_text(&f).unwrap_err().to_string().contains("not UTF-8"));
        #[cfg(unix)]
        assert!(read_bounded(Path::new("/dev/zero"), 1 << 10).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
