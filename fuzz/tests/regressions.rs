//! Inputs the fuzzer once found (kept under `fuzz/regressions/<target>/`) run without
//! a panic; every target's seeds are accepted (so mutations start from valid input);
//! and a short run of each target finds nothing.

use std::path::Path;
use std::time::Duration;

use shardc_fuzz::{fuzz, replay_dir, target, Options, NAMES};

fn scratch() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn saved_findings_no_longer_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
    let mut seen = 0;
    for name in NAMES {
        let dir = root.join(name);
        if !dir.is_dir() {
            continue;
        }
        seen += std::fs::read_dir(&dir).unwrap().count();
        let t = target(name, &scratch().join("regressions")).unwrap();
        let bad = replay_dir(&t, &dir);
        assert!(bad.is_empty(), "{name}: {bad:?}");
    }
    assert!(seen > 0, "no saved findings under {}", root.display());
}

#[test]
fn every_seed_is_accepted() {
    for name in NAMES {
        let t = target(name, &scratch().join("seeds")).unwrap();
        assert!(!t.seeds.is_empty(), "{name}");
        for (i, s) in t.seeds.iter().enumerate() {
            assert_eq!((t.run)(s), Ok(()), "{name} seed {i}");
        }
    }
}

/// `SHARDC_FUZZ_ITERATIONS` inputs per target (default 2000; CI runs 10 000).
#[test]
fn a_short_run_of_every_target_finds_nothing() {
    let n: u64 = std::env::var("SHARDC_FUZZ_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    for name in NAMES {
        let t = target(name, &scratch().join("short")).unwrap();
        let options = Options {
            iterations: n,
            seed: 7,
            skip: 0,
            capture: None,
            hang_limit: Duration::from_secs(60),
            findings: scratch().join("findings"),
            progress_every: 0,
            quiet: false,
        };
        let r = fuzz(&t, &options);
        assert_eq!(r.execs, n, "{name}");
        assert!(r.refused > 0, "{name}: no mutation was refused: the mutator does nothing");
        assert_eq!(r.panics, 0, "{name}: {:?}", r.findings);
    }
}
