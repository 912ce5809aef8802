//! `weights::bound_allocator_cache`: a large block freed is returned, not kept (a test
//! binary of its own: the setting is process-wide and must come before the first large
//! block).

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn large_blocks_are_mapped_for_their_use_after_the_bound() {
    /// glibc's `struct mallinfo2` (ten `size_t`s); `hblkhd` is the bytes in mapped blocks.
    #[repr(C)]
    struct MallInfo2 {
        fields: [usize; 10],
    }
    extern "C" {
        fn mallinfo2() -> MallInfo2;
    }
    // SAFETY: `mallinfo2` only reads the allocator's statistics.
    let mapped = || unsafe { mallinfo2() }.fields[4];
    let block = |mib: usize| {
        let v = vec![1u8; mib << 20];
        std::hint::black_box(&v);
        mapped()
    };
    assert!(shardc_runtime::weights::bound_allocator_cache());
    let before = mapped();
    // Unbounded, glibc raises its threshold to the size of a mapped block once it is
    // freed (here 30 MiB): the 24 MiB block would then come from the heap, and its pages
    // stay resident once freed (without the bound the first assertion fails).
    block(30);
    assert!(block(24) >= before + (24 << 20), "a 24 MiB block is mapped");
    assert!(mapped() < before + (24 << 20), "and returned when freed");
}
