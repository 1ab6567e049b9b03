//! What `pipe doctor` says about the CPU: the integer instructions behind
//! `frozen_dtype: int8` and `int4` (both multiply with ONNX Runtime's `DynamicQuantizeMatMul`:
//! uint8 × int8 where the CPU has VNNI, else uint8 × uint8, exact where uint8 × int8 would
//! saturate; see `pipe_onnx::Int8Storage`).

use pipe_onnx::Int8Storage;
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
    /// The integer product int8 weights run on this CPU: `uint8 x int8` or `uint8 x uint8`.
    pub int8_products: &'static str,
}

impl std::fmt::Display for CpuReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let speed = if self.integer_kernels.iter().any(|k| k.ends_with("vnni")) {
            "VNNI dot products"
        } else if self.integer_kernels.contains(&"avx2") {
            "AVX2, no VNNI"
        } else {
            "no x86 integer extensions found: `frozen_dtype: int8` or `int4` saves memory, not time"
        };
        write!(
            f,
            "{}: {} (int8 products run {}: {speed})",
            self.arch,
            self.integer_kernels.join(", "),
            self.int8_products
        )
    }
}

/// Detects the CPU's integer extensions.
pub fn cpu_report() -> CpuReport {
    CpuReport {
        arch: std::env::consts::ARCH,
        integer_kernels: integer_kernels(),
        int8_products: match Int8Storage::for_this_cpu() {
            Int8Storage::Signed => "uint8 x int8",
            Int8Storage::Offset => "uint8 x uint8",
        },
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
