//! What `pipe doctor` says about the CPU: the integer instructions behind
//! `frozen_dtype: int8` and `int4` (both multiply with ONNX Runtime's u8×s8 products, which
//! use AVX-512 VNNI, AVX-VNNI or AVX2).

use serde::Serialize;

/// The CPU's instruction sets that decide how fast int8 products (`frozen_dtype: int8` and
/// `int4`) run.
#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    /// `x86_64`, `aarch64`, ...
    pub arch: &'static str,
    /// Integer dot-product and vector extensions found, fastest first (`avx512_vnni`,
    /// `avx_vnni`, `avx512bw`, `avx2`).
    pub integer_kernels: Vec<&'static str>,
}

impl std::fmt::Display for CpuReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let speed = if self.integer_kernels.iter().any(|k| k.ends_with("vnni")) {
            "int8 products have VNNI dot products"
        } else if self.integer_kernels.contains(&"avx2") {
            "int8 products run on AVX2 (no VNNI)"
        } else {
            "no x86 integer extensions found: `frozen_dtype: int8` or `int4` saves memory, not time"
        };
        write!(
            f,
            "{}: {} ({speed})",
            self.arch,
            self.integer_kernels.join(", ")
        )
    }
}

/// Detects the CPU's integer extensions.
pub fn cpu_report() -> CpuReport {
    CpuReport {
        arch: std::env::consts::ARCH,
        integer_kernels: integer_kernels(),
    }
}

#[cfg(target_arch = "x86_64")]
fn integer_kernels() -> Vec<&'static str> {
    [
        (
            "avx512_vnni",
            std::arch::is_x86_feature_detected!("avx512vnni"),
        ),
        ("avx_vnni", std::arch::is_x86_feature_detected!("avxvnni")),
        ("avx512bw", std::arch::is_x86_feature_detected!("avx512bw")),
        ("avx2", std::arch::is_x86_feature_detected!("avx2")),
    ]
    .into_iter()
    .filter_map(|(name, found)| found.then_some(name))
    .collect()
}

#[cfg(not(target_arch = "x86_64"))]
fn integer_kernels() -> Vec<&'static str> {
    Vec::new()
}
