//! Loading ONNX Runtime and running graphs on it.
//!
//! - [`locate_library`] finds `libonnxruntime.so.1.31.1` (see its docs for the search order),
//!   [`init`] loads it once per process, [`runtime_info`] reports what was loaded.
//! - [`Session`] runs a model on the CPU or, when asked, on CUDA (an error when this build cannot:
//!   never a silent CPU fallback). Host data goes in and out as [`HostTensor`].
//! - [`Trainer`] keeps training state inside ONNX Runtime between steps; [`FlatTrainer`] keeps
//!   it once, in flat host buffers, and runs AdamW on the host.

mod flat_trainer;
mod host;
mod trainer;

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

pub use flat_trainer::FlatTrainer;
pub use host::{HostData, HostTensor};
pub use trainer::{StepResult, Trainer};

use crate::error::OrtContext;
use crate::{Error, Model, Result};

/// File name of the ONNX Runtime library `pipe` is built and tested against.
pub const LIBRARY_NAME: &str = "libonnxruntime.so.1.31.1";

/// Where `scripts/fetch-onnxruntime.sh` puts the library, relative to the repository root.
const TOOLS_DIR: &str = ".tools/onnxruntime";

/// Finds the ONNX Runtime shared library. Searched in order:
///
/// 1. the `ORT_DYLIB_PATH` environment variable;
/// 2. `.tools/onnxruntime/libonnxruntime.so.1.31.1` in the folder of the current executable and
///    each of its ancestors;
/// 3. the same in the current directory and each of its ancestors;
/// 4. the repository's `.tools` folder as seen from this crate's source (dev and test builds).
///
/// The error lists every path searched and says to run `scripts/fetch-onnxruntime.sh`.
pub fn locate_library() -> Result<PathBuf> {
    let mut searched = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        searched.push(p);
    }
    let rel = Path::new(TOOLS_DIR).join(LIBRARY_NAME);
    let mut roots = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        roots.extend(dir.ancestors().map(Path::to_path_buf));
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    for root in roots {
        let p = root.join(&rel);
        if p.is_file() {
            return Ok(p);
        }
        searched.push(p);
    }
    let dev = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../.tools/onnxruntime/libonnxruntime.so.1.31.1"
    ));
    if dev.is_file() {
        return Ok(dev);
    }
    searched.push(dev);
    Err(Error::LibraryNotFound { searched })
}

struct Runtime {
    env: ort::environment::Environment,
    path: PathBuf,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

fn runtime() -> Result<&'static Runtime> {
    if let Some(r) = RUNTIME.get() {
        return Ok(r);
    }
    // A poisoned lock only means another thread panicked while loading; loading again is fine.
    let _guard = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = RUNTIME.get() {
        return Ok(r);
    }
    let path = locate_library()?;
    let builder = ort::init_from(&path).map_err(|e| Error::Ort {
        context: format!("failed to load ONNX Runtime from `{}`", path.display()),
        source: ort::Error::new(e.to_string()),
    })?;
    let env = builder
        .with_name("pipe")
        .build()
        .ort_context(|| "failed to create the ONNX Runtime environment".into())?;
    Ok(RUNTIME.get_or_init(|| Runtime { env, path }))
}

/// Loads ONNX Runtime (once per process) and returns the path it was loaded from.
pub fn init() -> Result<PathBuf> {
    Ok(runtime()?.path.clone())
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
        let status = (api.GetAvailableProviders)(&mut list, &mut n);
        if !status.0.is_null() {
            let msg = CStr::from_ptr((api.GetErrorMessage)(status.0))
                .to_string_lossy()
                .into_owned();
            (api.ReleaseStatus)(status.0);
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

/// Where a session runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// The CPU execution provider.
    #[default]
    Cpu,
    /// A CUDA device by index.
    Cuda(u32),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for Device {
    type Err = Error;

    /// Parses `cpu`, `cuda` (device 0) or `cuda:N`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| {
                    Error::Data(format!(
                        "unknown device `{s}`; expected cpu, cuda or cuda:N"
                    ))
                }),
        }
    }
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
    std::fs::create_dir_all(dir).map_err(io("failed to create graph cache", dir))?;
    let path = dir.join(format!("{}.onnx", blake3::hash(bytes).to_hex()));
    if !path.is_file() {
        let tmp = dir.join(format!(".{}.tmp", std::process::id()));
        std::fs::write(&tmp, bytes).map_err(io("failed to write cached graph", &tmp))?;
        std::fs::rename(&tmp, &path)
            .map_err(io("failed to move cached graph into place", &path))?;
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
        let mut b = Self::builder(opts)?;
        let inner = match &opts.graph_cache_dir {
            Some(dir) => {
                let path = cache_model(dir, bytes)?;
                b.commit_from_file(&path)
                    .ort_context(|| format!("failed to load model `{}`", path.display()))?
            }
            None => b
                .commit_from_memory(bytes)
                .ort_context(|| "failed to load model".into())?,
        };
        Ok(Session {
            inner,
            device: opts.device,
        })
    }

    /// Loads a model file (external data is looked up beside it).
    pub fn from_file(path: &Path, opts: &SessionOptions) -> Result<Self> {
        let inner = Self::builder(opts)?
            .commit_from_file(path)
            .ort_context(|| format!("failed to load model `{}`", path.display()))?;
        Ok(Session {
            inner,
            device: opts.device,
        })
    }

    fn builder(opts: &SessionOptions) -> Result<ort::session::builder::SessionBuilder> {
        let rt = runtime()?;
        let mut b = ort::session::Session::builder(&rt.env)
            .ort_context(|| "failed to create a session builder".into())?;
        if let Some(n) = opts.intra_threads {
            b = b
                .with_intra_threads(n)
                .ort_context(|| format!("failed to set {n} intra-op threads"))?;
        }
        if let Device::Cuda(_) = opts.device {
            let providers = available_providers()?;
            // This crate is built without ort's `cuda` feature, so even a CUDA-capable library
            // cannot be driven from here; say so rather than fall back to the CPU.
            return Err(Error::DeviceUnavailable {
                device: opts.device.to_string(),
                available: providers.join(", "),
            });
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

    /// Runs the model on host data; returns every output by name.
    pub fn run(&mut self, feeds: &[(&str, &HostTensor)]) -> Result<BTreeMap<String, HostTensor>> {
        let mut inputs = Vec::with_capacity(feeds.len());
        for (name, t) in feeds {
            inputs.push((name.to_string(), t.to_value()?));
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
