//! The C allocator's side of a stage's peak memory.

/// Makes the C allocator serve each allocation of 1 MiB or more from its own memory map,
/// given back to the system when freed. glibc otherwise raises that threshold as large
/// blocks are freed and serves them from heaps that do not shrink, so a stage that handles a
/// model's tensors one by one keeps the holes they leave:
///
/// - finetune quantizing f32 tensors one by one (each freed after) would peak near the whole
///   f32 model;
/// - ONNX Runtime allocates and frees each weight's buffers while it loads a model
///   (export-onnx's self-check, evaluate, predict): on GPT-Neo 2.7B the 26 MB attention
///   projections landed in the heap, which held up to 1.3 GB of holes at export's peak,
///   more or less from one build to the next.
///
/// Weights are few and large, so the cost is a few system calls per tensor. Every stage that
/// loads a model calls it as it starts.
pub fn release_large_frees() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes a tunable of glibc's allocator; any value is valid.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// This machine's physical memory in bytes; `None` where the system does not say.
pub fn physical_memory_bytes() -> Option<u64> {
    #[cfg(unix)]
    {
        // SAFETY: `sysconf` only reads system configuration values.
        let (pages, page) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let (pages, page) = (u64::try_from(pages).ok()?, u64::try_from(page).ok()?);
        pages.checked_mul(page)
    }
    #[cfg(not(unix))]
    {
        None
    }
}
