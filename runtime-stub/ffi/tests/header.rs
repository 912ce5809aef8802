//! `include/shardc.h` is what cbindgen generates from `src/lib.rs`: the committed
//! header cannot drift from the code. After changing the C API, rewrite it with
//! `SHARDC_BLESS_HEADER=1 cargo test -p shardc-runtime-ffi --test header` and read the
//! diff.

use std::path::Path;

/// The header generated from the code.
fn generated() -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config {
        language: cbindgen::Language::C,
        include_guard: Some("SHARDC_H".into()),
        cpp_compat: true,
        usize_is_size_t: true,
        documentation: true,
        header: Some(
            "/* shardc's device runtime as a C library. Generated from runtime-stub/ffi/src/lib.rs by cbindgen;\n * \
             do not edit (a test checks it against the code). */"
                .into(),
        ),
        ..Default::default()
    };
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen reads src/lib.rs");
    let mut bytes = Vec::new();
    bindings.write(&mut bytes);
    bytes
}

#[test]
fn the_committed_header_is_what_the_code_declares() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/shardc.h");
    let now = generated();
    let committed = std::fs::read(&path).unwrap_or_default();
    if now != committed {
        if std::env::var_os("SHARDC_BLESS_HEADER").is_some() && std::env::var("CI").as_deref() != Ok("true") {
            std::fs::write(&path, &now).unwrap();
            return;
        }
        panic!(
            "{} differs from what src/lib.rs declares; rewrite it with SHARDC_BLESS_HEADER=1 and read the diff:\n{}",
            path.display(),
            String::from_utf8_lossy(&now)
        );
    }
    let text = String::from_utf8(now).unwrap();
    for f in ["shardc_serve(", "shardc_serve_stop(", "shardc_generate(", "shardc_local(", "shardc_generate_options("] {
        assert!(text.contains(f), "the header declares {f}");
    }
}
