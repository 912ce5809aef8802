//! `weights::bound_allocator_cache`: a large block freed is returned, not kept; and
//! `weights::give_back_free_memory`: what the heap keeps goes back. A test binary of its
//! own with one test: the setting is process-wide and must come before the first large
//! block, and the resident figures are the whole process's.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn freed_memory_is_bounded_and_given_back() {
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
    // Blocks under the bound come from the heap and, freed, stay there (24 MiB in all:
    // under the 32 MiB kept) until given back. A block after them keeps them off the top
    // of the heap (glibc gives back a thread's heap top only past the threshold).
    let resident = || shardc_runtime::weights::resident_bytes().expect("VmRSS");
    let small: Vec<Vec<u8>> = (0..24).map(|i| vec![i as u8 + 1; 1 << 20]).collect();
    let fence = vec![1u8; 4096];
    std::hint::black_box((&small, &fence));
    let holding = resident();
    drop(small);
    let kept = resident();
    assert!(kept + (8 << 20) > holding, "freed blocks under the bound stay resident: {kept} against {holding}");
    assert!(shardc_runtime::weights::give_back_free_memory());
    let given = resident();
    assert!(given + (16 << 20) < kept, "given back: {given} against {kept} before");
    drop(fence);
}
