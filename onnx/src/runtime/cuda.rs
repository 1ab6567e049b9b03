//! The CUDA execution provider: its options, the CUDA 13 libraries it needs, and what the
//! CUDA runtime says about a device.
//!
//! ONNX Runtime's CUDA provider (`libonnxruntime_providers_cuda.so`, beside the core library)
//! needs `libcudart.so.13`, `libcublas.so.13`, `libcublasLt.so.13`, `libcurand.so.10` and the
//! driver's `libcuda.so.1`, and opens cuDNN 9 when an operator needs it. When
//! `scripts/fetch-onnxruntime.sh --gpu --with-cuda-runtime` put those libraries beside the
//! core library, [`preload_runtime_libraries`] opens them by full path before the provider
//! loads, so the dynamic loader resolves the provider's dependencies to them without any
//! `LD_LIBRARY_PATH`; otherwise the system's CUDA 13 installation is used.

use std::ffi::{c_char, c_int};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use ort::ep::ExecutionProviderDispatch;

/// Options of the CUDA execution provider that `pipe` sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaOptions {
    /// TensorFloat-32 matrix products (`use_tf32`): about 10 bits of mantissa in the products,
    /// much faster on Ampere and later. On by default, as in PyTorch's
    /// `torch.backends.cuda.matmul.allow_tf32 = True`.
    pub tf32: bool,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions { tf32: true }
    }
}

/// The CUDA execution provider for device `ordinal`, failing (not falling back to the CPU)
/// when it cannot be registered.
pub(crate) fn execution_provider(ordinal: u32, options: CudaOptions) -> ExecutionProviderDispatch {
    ort::ep::CUDA::default()
        .with_device_id(i32::try_from(ordinal).unwrap_or(i32::MAX))
        .with_tf32(options.tf32)
        // Grow the arena by what is asked, not by powers of two: training state is large and
        // allocated once, and doubling would strand up to half the device.
        .with_arena_extend_strategy(ort::ep::ArenaExtendStrategy::SameAsRequested)
        .build()
        .error_on_failure()
}

/// The CUDA 13 and cuDNN 9 libraries the provider opens, each after its dependencies. cuDNN's
/// own parts (`libcudnn_ops.so.9`, …) are opened by `libcudnn.so.9` when needed, from its folder.
pub const RUNTIME_LIBRARIES: &[&str] = &[
    "libcudart.so.13",
    "libcublasLt.so.13",
    "libcublas.so.13",
    "libcurand.so.10",
    "libnvrtc.so.13",
    "libcudnn.so.9",
];

/// Libraries opened by [`preload_runtime_libraries`]; kept open for the life of the process.
static PRELOADED: Mutex<Vec<libloading::Library>> = Mutex::new(Vec::new());

/// Opens those of [`RUNTIME_LIBRARIES`] that lie in `dir` (once per library). A library that
/// is there but cannot be opened is an error naming it; a missing one is left to the system.
pub(crate) fn preload_runtime_libraries(dir: &Path) -> Result<(), String> {
    let mut loaded = PRELOADED.lock().unwrap_or_else(|e| e.into_inner());
    if !loaded.is_empty() {
        return Ok(());
    }
    for name in RUNTIME_LIBRARIES {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        // SAFETY: these are NVIDIA's CUDA libraries, whose initialisers only set up their own
        // state; they stay loaded for the rest of the process.
        let lib = unsafe { libloading::Library::new(&path) }
            .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        loaded.push(lib);
    }
    Ok(())
}

/// What the CUDA runtime says about one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Bytes free on the device (all processes counted).
    pub free_bytes: u64,
    /// The device's memory.
    pub total_bytes: u64,
}

type CudaError = c_int;

/// The entry points of `libcudart.so.13` that `pipe` calls.
struct Cudart {
    _lib: libloading::Library,
    get_device_count: unsafe extern "C" fn(*mut c_int) -> CudaError,
    set_device: unsafe extern "C" fn(c_int) -> CudaError,
    mem_get_info: unsafe extern "C" fn(*mut usize, *mut usize) -> CudaError,
    get_error_string: unsafe extern "C" fn(CudaError) -> *const c_char,
    runtime_get_version: unsafe extern "C" fn(*mut c_int) -> CudaError,
    driver_get_version: unsafe extern "C" fn(*mut c_int) -> CudaError,
}

/// `libcudart.so.13`, opened once (the copy [`preload_runtime_libraries`] loaded, else the
/// system's); the error says why it cannot be opened.
fn cudart() -> Result<&'static Cudart, String> {
    static CUDART: OnceLock<Result<Cudart, String>> = OnceLock::new();
    CUDART
        .get_or_init(|| {
            // SAFETY: libcudart's initialiser only sets up its own state; each symbol below is
            // looked up with the signature of the CUDA 13 runtime API.
            unsafe {
                let lib = libloading::Library::new("libcudart.so.13").map_err(|e| e.to_string())?;
                macro_rules! sym {
                    ($name:literal) => {
                        *lib.get($name).map_err(|e| e.to_string())?
                    };
                }
                Ok(Cudart {
                    get_device_count: sym!(b"cudaGetDeviceCount"),
                    set_device: sym!(b"cudaSetDevice"),
                    mem_get_info: sym!(b"cudaMemGetInfo"),
                    get_error_string: sym!(b"cudaGetErrorString"),
                    runtime_get_version: sym!(b"cudaRuntimeGetVersion"),
                    driver_get_version: sym!(b"cudaDriverGetVersion"),
                    _lib: lib,
                })
            }
        })
        .as_ref()
        .map_err(Clone::clone)
}

impl Cudart {
    /// `Ok` for `cudaSuccess`, else the runtime's description of the error.
    fn check(&self, what: &str, code: CudaError) -> Result<(), String> {
        if code == 0 {
            return Ok(());
        }
        // SAFETY: cudaGetErrorString returns a static NUL-terminated string for any code.
        let text = unsafe { std::ffi::CStr::from_ptr((self.get_error_string)(code)) };
        Err(format!(
            "{what} failed: {} (CUDA error {code})",
            text.to_string_lossy()
        ))
    }
}

/// The number of CUDA devices the CUDA runtime sees, or why it sees none.
pub fn device_count() -> Result<u32, String> {
    let rt = cudart()?;
    let mut n: c_int = 0;
    // SAFETY: `n` is a valid out-pointer.
    rt.check("cudaGetDeviceCount", unsafe {
        (rt.get_device_count)(&mut n)
    })?;
    Ok(u32::try_from(n).unwrap_or(0))
}

/// Free and total memory of device `ordinal` (`cudaMemGetInfo`). Free memory counts every
/// process, so during training `total - free` is this process's use plus anyone else's.
pub fn device_memory(ordinal: u32) -> Result<DeviceMemory, String> {
    let rt = cudart()?;
    let (mut free, mut total) = (0usize, 0usize);
    let dev = c_int::try_from(ordinal).map_err(|_| format!("no CUDA device {ordinal}"))?;
    // SAFETY: plain calls with valid out-pointers.
    unsafe {
        rt.check("cudaSetDevice", (rt.set_device)(dev))?;
        rt.check("cudaMemGetInfo", (rt.mem_get_info)(&mut free, &mut total))?;
    }
    Ok(DeviceMemory {
        free_bytes: free as u64,
        total_bytes: total as u64,
    })
}

/// The CUDA runtime and driver versions (`13.0`, …), as the runtime reports them.
pub fn versions() -> Result<(String, String), String> {
    let rt = cudart()?;
    let (mut runtime, mut driver): (c_int, c_int) = (0, 0);
    // SAFETY: plain calls with valid out-pointers.
    unsafe {
        rt.check(
            "cudaRuntimeGetVersion",
            (rt.runtime_get_version)(&mut runtime),
        )?;
        rt.check("cudaDriverGetVersion", (rt.driver_get_version)(&mut driver))?;
    }
    let dotted = |v: c_int| format!("{}.{}", v / 1000, (v % 1000) / 10);
    Ok((dotted(runtime), dotted(driver)))
}

/// The name of device `ordinal` (`NVIDIA H100 80GB HBM3`, …), from the driver API.
pub fn device_name(ordinal: u32) -> Result<String, String> {
    type CuResult = c_int;
    // SAFETY: libcuda.so.1 is NVIDIA's driver library; the three entry points have these
    // signatures in every driver since CUDA 4; `name` has room for the 256 bytes we allow.
    unsafe {
        let lib = libloading::Library::new("libcuda.so.1").map_err(|e| e.to_string())?;
        let init: libloading::Symbol<unsafe extern "C" fn(u32) -> CuResult> =
            lib.get(b"cuInit").map_err(|e| e.to_string())?;
        let get: libloading::Symbol<unsafe extern "C" fn(*mut c_int, c_int) -> CuResult> =
            lib.get(b"cuDeviceGet").map_err(|e| e.to_string())?;
        let get_name: libloading::Symbol<
            unsafe extern "C" fn(*mut c_char, c_int, c_int) -> CuResult,
        > = lib.get(b"cuDeviceGetName").map_err(|e| e.to_string())?;
        let code = init(0);
        if code != 0 {
            return Err(format!("cuInit failed (CUDA driver error {code})"));
        }
        let mut dev: c_int = 0;
        let ordinal = c_int::try_from(ordinal).map_err(|_| format!("no CUDA device {ordinal}"))?;
        let code = get(&mut dev, ordinal);
        if code != 0 {
            return Err(format!(
                "cuDeviceGet({ordinal}) failed (CUDA driver error {code})"
            ));
        }
        let mut name = [0 as c_char; 256];
        let code = get_name(name.as_mut_ptr(), 256, dev);
        if code != 0 {
            return Err(format!("cuDeviceGetName failed (CUDA driver error {code})"));
        }
        // Keep the driver loaded: ONNX Runtime's provider uses it for the rest of the process.
        std::mem::forget(lib);
        Ok(std::ffi::CStr::from_ptr(name.as_ptr().cast::<c_char>())
            .to_string_lossy()
            .into_owned())
    }
}

/// What to do about a CUDA failure, judged from ONNX Runtime's or CUDA's message.
pub fn fix_for(reason: &str) -> &'static str {
    let has = |s: &str| reason.contains(s);
    if has("libcuda.so.1") || has("CUDA driver version") || has("insufficient for CUDA") {
        "this machine has no NVIDIA driver for CUDA 13 (`libcuda.so.1`, driver 580 or later); \
         install one, or use `device: cpu` or `device: auto`"
    } else if [
        "libcudart",
        "libcublas",
        "libcurand",
        "libcudnn",
        "libnvrtc",
    ]
    .iter()
    .any(|l| has(l))
    {
        "the CUDA 13 runtime libraries are missing: run \
         `scripts/fetch-onnxruntime.sh --gpu --with-cuda-runtime`, or install CUDA 13 and \
         cuDNN 9 and put their lib folder on LD_LIBRARY_PATH"
    } else if has("no CUDA execution provider") || has("libonnxruntime_providers") {
        "run `scripts/fetch-onnxruntime.sh --gpu` for the onnxruntime-gpu build, or point \
         ORT_DYLIB_PATH at an ONNX Runtime 1.31 library built with CUDA"
    } else if has("no CUDA-capable device") || has("invalid device ordinal") {
        "no such CUDA device here (`nvidia-smi -L` lists them); pick another `cuda:N`, or use \
         `device: cpu` or `device: auto`"
    } else {
        "see `pipe doctor`; or use `device: cpu` or `device: auto`"
    }
}

#[cfg(test)]
mod tests {
    use super::fix_for;

    #[test]
    fn each_kind_of_failure_gets_its_own_fix() {
        let cases = [
            (
                "Failed to load library libonnxruntime_providers_cuda.so with error: \
                 libcuda.so.1: cannot open shared object file: No such file or directory",
                "NVIDIA driver",
            ),
            (
                "Failed to load library libonnxruntime_providers_cuda.so with error: \
                 libcublasLt.so.13: cannot open shared object file: No such file or directory",
                "--with-cuda-runtime",
            ),
            (
                "the ONNX Runtime library loaded, /x/libonnxruntime.so.1.31.1, has no CUDA \
                 execution provider (it offers CPUExecutionProvider)",
                "fetch-onnxruntime.sh --gpu",
            ),
            (
                "CUDA failure 100: no CUDA-capable device is detected ; GPU=0",
                "nvidia-smi -L",
            ),
            (
                "CUDA failure 35: CUDA driver version is insufficient for CUDA runtime version",
                "driver 580 or later",
            ),
            ("something else entirely", "pipe doctor"),
        ];
        for (reason, expected) in cases {
            let fix = fix_for(reason);
            assert!(fix.contains(expected), "{reason}\n→ {fix}");
        }
    }
}
