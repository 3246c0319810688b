//! Process memory: the binaries' allocator and peak RSS.

/// The global allocator of llmprune's binaries (each declares it with
/// `#[global_allocator]`), configured by [`configure_allocator`].
pub use mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its `mi_option_e`, identical in v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory in the process for reuse instead of returning it to the OS.
///
/// A training step allocates and frees activations and gradients of up to hundreds of MB
/// (logits, embedding gradients). glibc serves blocks over 32 MB from a fresh `mmap` and
/// unmaps them on free, and mimalloc by default purges freed memory after 10 ms, so every
/// step paid again in page faults and kernel page clearing: ~190k faults and 15% of the
/// CPU time of a SmolLM2 forward+backward here, 8–9% of its wall time. Peak RSS grows by
/// ~2% (fragmentation), since the peak is the same set of live tensors. Binaries call this
/// first thing in `main`.
pub fn configure_allocator() {
    // SAFETY: sets one integer option; mimalloc reads it on later frees.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

/// Peak resident memory of this process in bytes; 0 where it cannot be read.
pub fn peak_rss_bytes() -> u64 {
    peak_rss_mb().map_or(0, |mb| (mb * 1048576.0) as u64)
}

/// Peak resident memory of this process (VmHWM), in MiB; `None` off Linux.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
