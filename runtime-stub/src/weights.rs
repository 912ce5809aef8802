//! Weights, read through memory maps on first use and converted to compute types
//! (f16 and bf16 widen to f32 with `half`), so a run never reads a weight it does not
//! touch.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use memmap2::Mmap;
use ndarray::{ArrayD, IxDyn};
use shardc_ir::{DType, WeightRef};

use crate::tensor::{Data, Tensor};
use crate::RuntimeError;
use shardc_format::names::is_plain_name;

/// Memory maps of the weight files a graph may read: any file under a model's folder
/// (never outside it), or only the files a package's manifest lists, each checked
/// against the manifest's blake3 hash when it is mapped, so a run computes with no
/// byte a hash does not cover. Clones share the maps.
#[derive(Clone)]
pub struct WeightFiles {
    dir: PathBuf,
    /// For a package: the files its manifest lists, with their blake3 hashes (hex).
    listed: Option<Rc<BTreeMap<String, String>>>,
    maps: Rc<RefCell<HashMap<String, Arc<Mmap>>>>,
}

impl WeightFiles {
    /// Weight files are resolved relative to `dir` (the model's folder) and must lie
    /// inside it.
    pub fn new(dir: &Path) -> WeightFiles {
        WeightFiles { dir: dir.to_path_buf(), listed: None, maps: Rc::default() }
    }

    /// A package's weight files: only files `listed` (plain names, with hashes).
    pub fn package(dir: &Path, listed: BTreeMap<String, String>) -> WeightFiles {
        WeightFiles { dir: dir.to_path_buf(), listed: Some(Rc::new(listed)), maps: Rc::default() }
    }

    /// Where `file` lies, if the graph may read it.
    fn path(&self, file: &str) -> Result<PathBuf, String> {
        match &self.listed {
            Some(listed) => {
                if !listed.contains_key(file) {
                    return Err(format!("`{file}` is not a file the package's manifest lists and hashes"));
                }
                if !is_plain_name(file) {
                    return Err(format!("`{file}` is not a plain file name inside the package"));
                }
            }
            None => {
                let rel = Path::new(file);
                if file.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
                    return Err(format!("`{file}` is not a relative path inside the model's folder"));
                }
            }
        }
        Ok(self.dir.join(file))
    }

    /// Map `file` (checking its hash, for a package) unless it is mapped already.
    pub fn map(&self, file: &str) -> Result<Arc<Mmap>, String> {
        if let Some(m) = self.maps.borrow().get(file) {
            return Ok(m.clone());
        }
        let path = self.path(file)?;
        let f = File::open(&path).map_err(|e| e.to_string())?;
        // SAFETY: read-only map of a model file that nothing in this process writes.
        let map = Arc::new(unsafe { Mmap::map(&f) }.map_err(|e| e.to_string())?);
        if let Some(expected) = self.listed.as_ref().and_then(|l| l.get(file)) {
            let got = blake3::hash(&map).to_hex();
            if got.as_str() != expected {
                return Err(format!("blake3 {got} does not match the manifest's {expected}: the package was altered"));
            }
        }
        self.maps.borrow_mut().insert(file.to_string(), map.clone());
        Ok(map)
    }

    /// The mapped file holding weight `name` and the byte range it takes there, checked
    /// to lie inside the file and to be what its dtype and shape need.
    pub fn located(&self, name: &str, w: &WeightRef) -> Result<(Arc<Mmap>, std::ops::Range<usize>), RuntimeError> {
        let loc = w.location.as_ref().ok_or_else(|| RuntimeError::NoWeightFile { name: name.to_string() })?;
        let fail =
            |message: String| RuntimeError::Weight { name: name.to_string(), file: self.dir.join(&loc.file), message };
        let map = self.map(&loc.file).map_err(fail)?;
        let end = loc.offset.checked_add(loc.length).filter(|&e| e <= map.len() as u64).ok_or_else(|| {
            fail(format!(
                "bytes {}..{} lie past the end of the file ({} bytes)",
                loc.offset,
                loc.offset + loc.length,
                map.len()
            ))
        })?;
        if loc.length != w.byte_len() {
            return Err(fail(format!("{} bytes, but {} {:?} needs {}", loc.length, w.dtype, w.shape, w.byte_len())));
        }
        Ok((map, loc.offset as usize..end as usize))
    }

    /// Read and convert one weight.
    pub fn load(&self, name: &str, w: &WeightRef) -> Result<Tensor, RuntimeError> {
        let (map, range) = self.located(name, w)?;
        let fail = |message: String| RuntimeError::Weight {
            name: name.to_string(),
            file: w.location.as_ref().map(|l| self.dir.join(&l.file)).unwrap_or_default(),
            message,
        };
        let bytes = &map[range.clone()];
        let shape = IxDyn(&w.shape);
        let data = decode(w.dtype, bytes, w.elements() as usize);
        release(&map, range);
        let data = match data {
            Decoded::F32(v) => Data::F32(ArrayD::from_shape_vec(shape, v).map_err(|e| fail(e.to_string()))?),
            Decoded::I64(v) => Data::I64(ArrayD::from_shape_vec(shape, v).map_err(|e| fail(e.to_string()))?),
            Decoded::Bool(v) => Data::Bool(ArrayD::from_shape_vec(shape, v).map_err(|e| fail(e.to_string()))?),
        };
        Ok(Tensor::with_dtype(w.dtype, data))
    }
}

/// This process's resident memory, bytes (Linux: `VmRSS` of `/proc/self/status`;
/// `None` where that is not available): weights loaded, mapped pages read, and the rest.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// Give the allocator's free memory back to the system (glibc keeps freed blocks —
/// a prompt step's logits, tens of MB — for reuse, up to twice the largest block it
/// has mapped; the next step then faults in what it uses again). For a device with
/// nothing to do; `false` where the C library has no such call (not glibc). glibc's
/// trim leaves the top of a thread's own heap (not the main one) alone: there only
/// [`bound_allocator_cache`]'s threshold bounds what stays.
pub fn give_back_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: glibc's `malloc_trim` takes any pad, locks its arenas itself and only
        // releases memory no allocation holds.
        unsafe { malloc_trim(0) };
        true
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// Bound what the allocator keeps of freed memory while steps run, for a process that
/// runs steps (`shardc-run`; `shardc run`, `profile`): blocks of 16 MiB and more (a prompt
/// step's logits: 25.7 MB for GPT-2-small's 128 positions) are mapped for their use and
/// returned when freed, and at most 32 MiB of freed memory stays at the top of the heap.
/// glibc's own thresholds grow with the largest block freed (up to 32 MiB mapped, twice
/// that kept), so the logits and the steps' other buffers stayed resident after a prompt
/// step: GPT-2-small 551 MB against its bound of 548 (weights 475 + KV 9 + 64), 529 MB so
/// (`cargo bench -p shardc --bench ort`). A process-wide setting, so the binaries make
/// it, not the library on its own; `false` where the C library is not glibc.
pub fn bound_allocator_cache() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        // SAFETY: `mallopt` takes these parameters with any positive value (1 on success).
        unsafe { mallopt(M_MMAP_THRESHOLD, 16 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 32 << 20) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// The mapped pages wholly inside `range`, copied out now, are given back: without
/// this a weight read once (converted, transposed) stays resident twice, as its copy
/// and as the mapped file's pages (measured: 1058 MB resident for 512 MB of f32
/// weights). The mapping is read-only and shared, so a later read of those bytes
/// (another weight's bytes on a shared page) maps them again from the file.
fn release(map: &Mmap, range: std::ops::Range<usize>) {
    #[cfg(unix)]
    {
        // A multiple of every common page size (4, 16 and 64 KiB): madvise needs whole pages.
        const PAGE: usize = 1 << 16;
        let (start, end) = (range.start.next_multiple_of(PAGE), range.end / PAGE * PAGE);
        if end > start {
            // SAFETY: a read-only shared file mapping: dropping its pages loses nothing
            // (they read back from the file); no reference into these pages outlives
            // this call (the weight was copied out, `bytes` is no longer used).
            let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
        }
    }
    #[cfg(not(unix))]
    let _ = (map, range);
}

enum Decoded {
    F32(Vec<f32>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

/// Little-endian bytes into compute values.
fn decode(dtype: DType, bytes: &[u8], elements: usize) -> Decoded {
    fn chunks<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        bytes.chunks_exact(N).map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            a
        })
    }
    match dtype {
        DType::F32 => Decoded::F32(chunks::<4>(bytes).map(f32::from_le_bytes).collect()),
        DType::F16 => Decoded::F32(chunks::<2>(bytes).map(|b| half::f16::from_le_bytes(b).to_f32()).collect()),
        DType::BF16 => Decoded::F32(chunks::<2>(bytes).map(|b| half::bf16::from_le_bytes(b).to_f32()).collect()),
        DType::F64 => Decoded::F32(chunks::<8>(bytes).map(|b| f64::from_le_bytes(b) as f32).collect()),
        DType::I64 => Decoded::I64(chunks::<8>(bytes).map(i64::from_le_bytes).collect()),
        DType::U64 => Decoded::I64(chunks::<8>(bytes).map(|b| u64::from_le_bytes(b) as i64).collect()),
        DType::I32 => Decoded::I64(chunks::<4>(bytes).map(|b| i64::from(i32::from_le_bytes(b))).collect()),
        DType::U32 => Decoded::I64(chunks::<4>(bytes).map(|b| i64::from(u32::from_le_bytes(b))).collect()),
        DType::I16 => Decoded::I64(chunks::<2>(bytes).map(|b| i64::from(i16::from_le_bytes(b))).collect()),
        DType::U16 => Decoded::I64(chunks::<2>(bytes).map(|b| i64::from(u16::from_le_bytes(b))).collect()),
        DType::I8 => Decoded::I64(bytes.iter().map(|&b| i64::from(b as i8)).collect()),
        DType::U8 => Decoded::I64(bytes.iter().map(|&b| i64::from(b)).collect()),
        DType::Bool => Decoded::Bool(bytes.iter().map(|&b| b != 0).collect()),
        DType::I4 | DType::U4 => {
            Decoded::I64(shardc_ir::tensor::decode_i64(dtype, bytes, elements).unwrap_or_default())
        }
        DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ | DType::F8E8M0 | DType::F4E2M1 => {
            Decoded::F32(shardc_ir::tensor::decode_f64(dtype, bytes, elements).into_iter().map(|v| v as f32).collect())
        }
    }
}
