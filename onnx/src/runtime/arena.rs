//! The CPU arena that every CPU session of this process allocates from.
//!
//! Left to itself, each CPU session makes its own arena that grows by powers of two, and
//! plans a "memory pattern": after the first run, one block per input shape for all of a
//! run's tensors, allocated beside the chunks the first run left free. On the SmolLM2-135M
//! shape a step whose tensors peak at 1.06 GB then held 4 GB of arena, 2.2 GB of it touched,
//! and the process peaked above PyTorch's. Registered once with the environment, one arena
//! grows by exactly what is asked (`kSameAsRequested`); sessions opt in with
//! `session.use_env_allocators` and run without the memory pattern, so each step reuses the
//! chunks of the one before (`Session::builder`). Measured in `bench/README.md`, "One CPU
//! arena, no memory pattern".

use std::ffi::c_char;

use ort::AsPointer;
use ort::environment::Environment;
use ort::memory::AllocatorType;

use super::memory::memory_info;
use super::{Device, status_message};
use crate::{Error, Result};

/// `arena_extend_strategy`'s `kSameAsRequested`.
const SAME_AS_REQUESTED: usize = 1;

/// Registers the shared CPU arena with `env`.
pub(super) fn register_cpu_arena(env: &Environment) -> Result<()> {
    let api = ort::api();
    let keys: [*const c_char; 1] = [c"arena_extend_strategy".as_ptr()];
    let values: [usize; 1] = [SAME_AS_REQUESTED];
    let memory = memory_info(Device::Cpu, AllocatorType::Arena)?;
    let mut config = std::ptr::null_mut();
    // SAFETY: the keys are NUL-terminated and live, as many as the values; ONNX Runtime copies
    // what it reads. `config` is released below once the allocator was registered (which
    // copies it), whatever the outcome. `env` and `memory` are live handles.
    unsafe {
        check(
            (api.CreateArenaCfgV2)(keys.as_ptr(), values.as_ptr(), keys.len(), &mut config),
            "cannot configure ONNX Runtime's CPU arena",
        )?;
        let registered = check(
            (api.CreateAndRegisterAllocator)(env.ptr().cast_mut(), memory.ptr(), config),
            "cannot register ONNX Runtime's CPU arena",
        );
        (api.ReleaseArenaCfg)(config);
        registered
    }
}

/// `Ok` for a null status; otherwise `what` and its message.
///
/// # Safety
/// `status` is null or a status ONNX Runtime returned and nobody released.
unsafe fn check(status: ort::sys::OrtStatusPtr, what: &str) -> Result<()> {
    // SAFETY: the caller's promise, passed on.
    match unsafe { status_message(status) } {
        None => Ok(()),
        Some(message) => Err(Error::Data(format!("{what}: {message}"))),
    }
}
