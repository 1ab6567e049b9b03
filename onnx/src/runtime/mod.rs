//! Loading ONNX Runtime and running graphs on it.
//!
//! - [`locate_library_for`] finds `libonnxruntime.so.1.31.1`, the CPU or the CUDA build (see
//!   [`library`] for which one a process loads), [`init_for`] loads it once per process,
//!   [`runtime_info`] reports what was loaded.
//! - [`Session`] runs a model on the CPU or on CUDA; asking for CUDA where it cannot be had is
//!   an error ([`Error::DeviceUnavailable`], with ONNX Runtime's reason and the fix), never a
//!   silent CPU fallback. [`probe`] answers "can a session be created on this device?" once
//!   per process, and [`resolve`] turns [`DeviceChoice::Auto`] into a device.
//! - Device memory: [`Session::state_allocator`] allocates tensors on the session's device
//!   (for IoBinding), [`write_host`] fills one from the host, [`HostTensor::from_value`] reads
//!   any back, [`Session::memory_stats`] reports the device arena's peak.
//! - [`FlatTrainer`] keeps the training state once, in flat host buffers, and runs AdamW on
//!   the host; [`DeviceTrainer`] keeps it once in flat buffers on the session's device and
//!   runs AdamW there as graphs. [`step_trainer`] picks one of the two by device, behind
//!   [`StepTrainer`]. (The `oracle` feature adds `Trainer`, the whole-graph AdamW step the
//!   tests check them against.)

mod arena;
mod binding;
pub mod cuda;
mod device;
mod device_trainer;
mod flat_trainer;
mod host;
mod host_kernels;
pub mod library;
mod memory;
mod step_trainer;
#[cfg(feature = "oracle")]
mod trainer;

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

pub use binding::StepResult;
pub use cuda::CudaOptions;
pub use device::{Device, DeviceChoice};
pub use device_trainer::DeviceTrainer;
pub use flat_trainer::FlatTrainer;
pub use host::{Elements, HostData, HostTensor, Shared, SharedBytes, SharedF32};
pub use library::{LIBRARY_NAME, Preference, locate_library, locate_library_for};
pub use memory::{MemoryStats, host_memory, write_host};
pub use step_trainer::{DEVICE_STATE_ENV, StepTrainer, state_on_device, step_trainer};
#[cfg(feature = "oracle")]
pub use trainer::Trainer;

use crate::error::OrtContext;
use crate::{Error, Model, Result};

struct Runtime {
    env: ort::environment::Environment,
    path: PathBuf,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// The loaded runtime, loading it (with `preference`) when this is the first use.
fn runtime_for(preference: Preference) -> Result<&'static Runtime> {
    if let Some(r) = RUNTIME.get() {
        return Ok(r);
    }
    // A poisoned lock only means another thread panicked while loading; loading again is fine.
    let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = RUNTIME.get() {
        return Ok(r);
    }
    let path = locate_library_for(preference)?;
    // Not an `ort::Error`: making one calls into the runtime that just failed to load.
    let builder = ort::init_from(&path).map_err(|e| library::unusable(&path, e.to_string()))?;
    let env = builder
        .with_name("pipe")
        .build()
        .ort_context(|| "failed to create the ONNX Runtime environment".into())?;
    arena::register_cpu_arena(&env)?;
    Ok(RUNTIME.get_or_init(|| Runtime { env, path }))
}

fn runtime() -> Result<&'static Runtime> {
    runtime_for(Preference::Cpu)
}

/// Loads ONNX Runtime (once per process) and returns the path it was loaded from.
pub fn init() -> Result<PathBuf> {
    Ok(runtime()?.path.clone())
}

/// Loads ONNX Runtime, the CUDA build first when `preference` says so and this process has not
/// loaded it yet (see [`library`]), and returns the path it was loaded from.
pub fn init_for(preference: Preference) -> Result<PathBuf> {
    Ok(runtime_for(preference)?.path.clone())
}

/// What `pipe doctor` reports about ONNX Runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// The library loaded.
    pub path: PathBuf,
    /// Its version (`1.31.1`).
    pub version: String,
    /// Execution providers it offers (`CPUExecutionProvider`, …).
    pub providers: Vec<String>,
}

/// Loads ONNX Runtime if needed and describes it.
pub fn runtime_info() -> Result<RuntimeInfo> {
    let rt = runtime()?;
    Ok(RuntimeInfo {
        path: rt.path.clone(),
        version: library_version(&rt.path)?,
        providers: available_providers()?,
    })
}

/// Whether CUDA device `ordinal` can run a session here, and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaStatus {
    /// The device asked about.
    pub device: Device,
    /// `None` when a session was created and ran on it; else ONNX Runtime's or CUDA's reason.
    pub unavailable: Option<String>,
    /// What to do when it is unavailable.
    pub fix: Option<String>,
    /// The device's name, when the driver answers.
    pub name: Option<String>,
    /// Its memory, when the CUDA runtime answers.
    pub memory: Option<cuda::DeviceMemory>,
    /// CUDA runtime and driver versions, when the CUDA runtime answers.
    pub versions: Option<(String, String)>,
}

/// Tries CUDA device `ordinal` (see [`probe`]) and describes it. Loads ONNX Runtime preferring
/// the CUDA build when this process has not loaded it yet.
pub fn cuda_status(ordinal: u32) -> CudaStatus {
    let device = Device::Cuda(ordinal);
    let unavailable = match probe(device) {
        Ok(()) => None,
        Err(Error::DeviceUnavailable { reason, .. }) => Some(reason),
        Err(other) => Some(other.to_string()),
    };
    CudaStatus {
        device,
        fix: unavailable.as_deref().map(|r| cuda::fix_for(r).to_string()),
        name: cuda::device_name(ordinal).ok(),
        memory: cuda::device_memory(ordinal).ok(),
        versions: cuda::versions().ok(),
        unavailable,
    }
}

/// Results of [`probe`] by CUDA ordinal, kept for the life of the process.
static PROBES: Mutex<BTreeMap<u32, std::result::Result<(), String>>> = Mutex::new(BTreeMap::new());

/// Checks that a session can be created and run on `device` (always true of the CPU). The first
/// call per CUDA device loads ONNX Runtime (the CUDA build first), the CUDA libraries beside
/// it, and creates and runs a one-node session on the device; the answer is kept for the rest
/// of the process. The error is [`Error::DeviceUnavailable`] with ONNX Runtime's reason.
pub fn probe(device: Device) -> Result<()> {
    let Device::Cuda(ordinal) = device else {
        return Ok(());
    };
    let mut probes = PROBES.lock().unwrap_or_else(|e| e.into_inner());
    let answer = probes
        .entry(ordinal)
        .or_insert_with(|| probe_cuda(ordinal))
        .clone();
    answer.map_err(|reason| unavailable(device, &reason))
}

/// [`Error::DeviceUnavailable`] for `device`, with the fix for `reason`.
fn unavailable(device: Device, reason: &str) -> Error {
    Error::DeviceUnavailable {
        device: device.to_string(),
        reason: reason.to_string(),
        fix: cuda::fix_for(reason).to_string(),
    }
}

fn probe_cuda(ordinal: u32) -> std::result::Result<(), String> {
    let rt = runtime_for(Preference::Cuda).map_err(|e| e.to_string())?;
    let providers = available_providers().map_err(|e| e.to_string())?;
    if !providers.iter().any(|p| p == "CUDAExecutionProvider") {
        let mut reason = format!(
            "the ONNX Runtime library loaded, {}, has no CUDA execution provider (it offers {})",
            rt.path.display(),
            providers.join(", ")
        );
        if let Some(gpu) = library::gpu_library().filter(|g| *g != rt.path) {
            reason.push_str(&format!(
                "; the CUDA build at {} is there, but this process had loaded the CPU build first",
                gpu.display()
            ));
        }
        return Err(reason);
    }
    if let Some(dir) = rt.path.parent() {
        cuda::preload_runtime_libraries(dir)?;
    }
    let mut g = crate::Graph::new("pipe_cuda_probe");
    let x = g
        .input("x", crate::DType::F32, &[crate::Dim::Fixed(2)])
        .map_err(|e| e.to_string())?;
    let y = g.neg(x).map_err(|e| e.to_string())?;
    g.output(y, "y").map_err(|e| e.to_string())?;
    let bytes = g.build().map_err(|e| e.to_string())?.to_bytes();
    let mut session = ort::session::Session::builder(&rt.env)
        .map_err(|e| e.to_string())?
        .with_execution_providers([cuda::execution_provider(ordinal, CudaOptions::default())])
        .map_err(|e| e.to_string())?
        .commit_from_memory(&bytes)
        .map_err(|e| e.to_string())?;
    let x = HostTensor::f32(&[2], vec![1.0, -2.0])
        .and_then(|t| t.to_value())
        .map_err(|e| e.to_string())?;
    let out = session
        .run(vec![("x".to_string(), x)])
        .map_err(|e| e.to_string())?;
    let y = HostTensor::from_value(&out["y"]).map_err(|e| e.to_string())?;
    if y.as_f32() != Some(&[-1.0, 2.0][..]) {
        return Err(format!(
            "a test graph on cuda:{ordinal} computed {:?} instead of [-1, 2]",
            y.as_f32()
        ));
    }
    Ok(())
}

/// Which device a [`DeviceChoice`] comes to on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The device to use.
    pub device: Device,
    /// For `auto` that fell back to the CPU: why CUDA could not be used.
    pub fallback: Option<String>,
}

/// A fixed device when [`probe`] accepts it (its error otherwise); `auto`: CUDA device 0 when
/// a session can be created on it, else the CPU with CUDA's reason.
pub fn resolve(choice: DeviceChoice) -> Result<Resolved> {
    match choice {
        DeviceChoice::Fixed(device) => {
            probe(device)?;
            Ok(Resolved {
                device,
                fallback: None,
            })
        }
        DeviceChoice::Auto => match probe(Device::Cuda(0)) {
            Ok(()) => Ok(Resolved {
                device: Device::Cuda(0),
                fallback: None,
            }),
            Err(Error::DeviceUnavailable { reason, .. }) => Ok(Resolved {
                device: Device::Cpu,
                fallback: Some(reason),
            }),
            Err(other) => Err(other),
        },
    }
}

/// The version string the library reports (`OrtGetApiBase()->GetVersionString()`).
fn library_version(path: &Path) -> Result<String> {
    let fail = |m: String| {
        Error::Data(format!(
            "cannot read the version of `{}`: {m}",
            path.display()
        ))
    };
    // SAFETY: this is the library ONNX Runtime was already loaded from, so opening it again only
    // takes another reference; `OrtGetApiBase` has this signature in every ORT release, and
    // `GetVersionString` returns a static NUL-terminated string.
    unsafe {
        let lib = libloading::Library::new(path).map_err(|e| fail(e.to_string()))?;
        let get: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
            lib.get(b"OrtGetApiBase").map_err(|e| fail(e.to_string()))?;
        let base = get();
        if base.is_null() {
            return Err(fail("OrtGetApiBase returned null".into()));
        }
        let v = ((*base).GetVersionString)();
        Ok(CStr::from_ptr(v).to_string_lossy().into_owned())
    }
}

/// The message of a failed C API call's `status`, the status released; `None` when it
/// succeeded (a null status).
///
/// # Safety
/// `status` is null or a status ONNX Runtime returned and nobody released.
pub(super) unsafe fn status_message(status: ort::sys::OrtStatusPtr) -> Option<String> {
    if status.0.is_null() {
        return None;
    }
    let api = ort::api();
    // SAFETY: a non-null status owns its message until released, which happens after the copy.
    unsafe {
        let message = CStr::from_ptr((api.GetErrorMessage)(status.0))
            .to_string_lossy()
            .into_owned();
        (api.ReleaseStatus)(status.0);
        Some(message)
    }
}

/// Names of the execution providers the loaded library offers.
pub fn available_providers() -> Result<Vec<String>> {
    runtime()?;
    let api = ort::api();
    let mut list: *mut *mut std::ffi::c_char = std::ptr::null_mut();
    let mut n: std::ffi::c_int = 0;
    // SAFETY: the C API fills `list` with `n` NUL-terminated strings that stay valid until
    // `ReleaseAvailableProviders`, which is called below with the same pointer and count; a
    // non-null status is an error that we read and release.
    unsafe {
        if let Some(msg) = status_message((api.GetAvailableProviders)(&mut list, &mut n)) {
            return Err(Error::Data(format!(
                "cannot list execution providers: {msg}"
            )));
        }
        let count = usize::try_from(n).unwrap_or(0);
        let names = (0..count)
            .map(|i| CStr::from_ptr(*list.add(i)).to_string_lossy().into_owned())
            .collect();
        let status = (api.ReleaseAvailableProviders)(list, n);
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
        }
        Ok(names)
    }
}

/// Held while a CPU session is created until one has been: the first session that registers
/// pipe's CPU kernels adds their domain to ONNX's process-wide operator-set table, a
/// check-then-insert that two sessions created at the same moment race on ("the domain is
/// already exist"), as two matrix members starting together did. Later sessions find the
/// domain there and need no lock.
static KERNEL_REGISTRATION: Mutex<()> = Mutex::new(());
/// Whether a CPU session has registered pipe's CPU kernels in this process.
static KERNELS_REGISTERED: AtomicBool = AtomicBool::new(false);

/// Runs `create` (making a session on `device`) alone while pipe's CPU kernels are not yet
/// registered in this process.
fn registering_kernels<T>(device: Device, create: impl FnOnce() -> Result<T>) -> Result<T> {
    if device != Device::Cpu || KERNELS_REGISTERED.load(Ordering::Acquire) {
        return create();
    }
    let _alone = KERNEL_REGISTRATION
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let created = create()?;
    KERNELS_REGISTERED.store(true, Ordering::Release);
    Ok(created)
}

/// How to create a [`Session`].
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// Execution device.
    pub device: Device,
    /// Threads for one operator (`None`: ONNX Runtime's default, one per core).
    pub intra_threads: Option<usize>,
    /// When set, models are written there as `<blake3 of bytes>.onnx` (once) and loaded from
    /// the file, so a compiled step graph can be inspected and reused across runs.
    pub graph_cache_dir: Option<PathBuf>,
    /// CUDA provider options (used when `device` is CUDA).
    pub cuda: CudaOptions,
    /// When set, ONNX Runtime's profiler records every kernel and writes its trace to
    /// `<prefix>_<timestamp>.json` when the session is dropped (`bench/profile_step.py`
    /// reads it).
    pub profile_prefix: Option<PathBuf>,
}

/// A model loaded in ONNX Runtime.
pub struct Session {
    inner: ort::session::Session,
    device: Device,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// Writes `bytes` to `dir/<hash>.onnx` unless it is there already; returns the path.
fn cache_model(dir: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let io = |context, path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io {
            context,
            path,
            source,
        }
    };
    fs_err::create_dir_all(dir).map_err(io("failed to create graph cache", dir))?;
    let path = dir.join(format!("{}.onnx", blake3::hash(bytes).to_hex()));
    if !path.is_file() {
        let tmp = dir.join(format!(".{}.tmp", std::process::id()));
        fs_err::write(&tmp, bytes).map_err(io("failed to write cached graph", &tmp))?;
        fs_err::rename(&tmp, &path).map_err(io("failed to move cached graph into place", &path))?;
    }
    Ok(path)
}

impl Session {
    /// Loads a built model.
    pub fn from_model(model: &Model, opts: &SessionOptions) -> Result<Self> {
        Self::from_bytes(&model.to_bytes(), opts)
    }

    /// Loads a serialised model.
    pub fn from_bytes(bytes: &[u8], opts: &SessionOptions) -> Result<Self> {
        let inner = registering_kernels(opts.device, || {
            let mut b = Self::builder(opts)?;
            match &opts.graph_cache_dir {
                Some(dir) => {
                    let path = cache_model(dir, bytes)?;
                    b.commit_from_file(&path)
                        .ort_context(|| format!("failed to load model `{}`", path.display()))
                }
                None => b
                    .commit_from_memory(bytes)
                    .ort_context(|| "failed to load model".into()),
            }
        })?;
        Ok(Session {
            inner,
            device: opts.device,
        })
    }

    /// Loads a model file (external data is looked up beside it).
    pub fn from_file(path: &Path, opts: &SessionOptions) -> Result<Self> {
        let inner = registering_kernels(opts.device, || {
            Self::builder(opts)?
                .commit_from_file(path)
                .ort_context(|| format!("failed to load model `{}`", path.display()))
        })?;
        Ok(Session {
            inner,
            device: opts.device,
        })
    }

    fn builder(opts: &SessionOptions) -> Result<ort::session::builder::SessionBuilder> {
        let rt = match opts.device {
            Device::Cpu => runtime()?,
            Device::Cuda(_) => runtime_for(Preference::Cuda)?,
        };
        let mut b = ort::session::Session::builder(&rt.env)
            .ort_context(|| "failed to create a session builder".into())?;
        if let Some(n) = opts.intra_threads {
            b = b
                .with_intra_threads(n)
                .ort_context(|| format!("failed to set {n} intra-op threads"))?;
        }
        if let Some(prefix) = &opts.profile_prefix {
            b = b
                .with_profiling(prefix)
                .ort_context(|| format!("failed to profile into `{}`", prefix.display()))?;
        }
        if opts.device == Device::Cpu {
            // The process's one arena, grown by what is asked, and no memory pattern: see
            // `arena.rs`.
            b = b
                .with_env_allocators()
                .ort_context(|| "failed to use the shared CPU arena".into())?
                .with_memory_pattern(false)
                .ort_context(|| "failed to turn the memory pattern off".into())?;
            let kernels = host_kernels::domain()
                .ort_context(|| "failed to register pipe's CPU kernels".into())?;
            b = b
                .with_operators(kernels)
                .ort_context(|| "failed to register pipe's CPU kernels".into())?;
        }
        if let Device::Cuda(ordinal) = opts.device {
            probe(opts.device)?;
            b = b
                .with_execution_providers([cuda::execution_provider(ordinal, opts.cuda)])
                .map_err(|e| unavailable(opts.device, &e.to_string()))?;
        }
        Ok(b)
    }

    /// The device it runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Names of the model's inputs, in order.
    pub fn input_names(&self) -> Vec<String> {
        self.inner
            .inputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect()
    }

    /// Names of the model's outputs, in order.
    pub fn output_names(&self) -> Vec<String> {
        self.inner
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect()
    }

    /// Runs the model on host data (read in place, not copied); returns every output by name.
    pub fn run(&mut self, feeds: &[(&str, &HostTensor)]) -> Result<BTreeMap<String, HostTensor>> {
        let mut inputs = Vec::with_capacity(feeds.len());
        for (name, t) in feeds {
            inputs.push((*name, t.view()?));
        }
        let outputs = self
            .inner
            .run(inputs)
            .ort_context(|| "failed to run model".into())?;
        let mut out = BTreeMap::new();
        for (name, v) in outputs.iter() {
            out.insert(name.to_string(), HostTensor::from_value(&v)?);
        }
        Ok(out)
    }

    /// The underlying `ort` session, for what this wrapper does not cover.
    pub fn ort(&mut self) -> &mut ort::session::Session {
        &mut self.inner
    }
}
