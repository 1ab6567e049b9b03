//! Tensors in the memory of a session's device, for state kept between runs (IoBinding).
//!
//! On the CPU this is ordinary host memory. On CUDA, [`Session::state_allocator`] allocates in
//! the arena of the session's CUDA provider, so bound inputs and outputs never leave the device;
//! [`write_host`] and [`HostTensor::from_value`] copy between such tensors and the host.

use std::ffi::{CStr, c_char};

use ort::AsPointer;
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::value::{DynTensor, DynTensorValueType};

use super::{Device, HostData, HostTensor, Session, status_message};
use crate::error::OrtContext;
use crate::{Error, Result};

/// Memory of `device` as ONNX Runtime names it.
pub(super) fn memory_info(device: Device, allocator: AllocatorType) -> Result<MemoryInfo<'static>> {
    let (name, id) = match device {
        Device::Cpu => (AllocationDevice::CPU, 0),
        Device::Cuda(n) => (AllocationDevice::CUDA, i32::try_from(n).unwrap_or(i32::MAX)),
    };
    MemoryInfo::new(name, id, allocator, MemoryType::Default)
        .ort_context(|| format!("failed to describe the memory of {device}"))
}

/// Host memory, for outputs read on the host every step (the loss, the gradient norm):
/// `binding.bind_output_to_device(name, &host_memory()?)`.
pub fn host_memory() -> Result<MemoryInfo<'static>> {
    memory_info(Device::Cpu, AllocatorType::Device)
}

/// The arena statistics of one device, as ONNX Runtime keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes in use now.
    pub in_use: u64,
    /// The most bytes ever in use at once: the peak.
    pub max_in_use: u64,
    /// Bytes the arena holds from the device (in use or cached for reuse).
    pub reserved: u64,
}

impl Session {
    /// Memory of the device this session runs on (CUDA memory for a CUDA session).
    pub fn device_memory(&self) -> Result<MemoryInfo<'static>> {
        memory_info(self.device, AllocatorType::Device)
    }

    /// An allocator of the session's device, for tensors bound with IoBinding and kept between
    /// runs: `DynTensor::new(&session.state_allocator()?, ty, shape)`. On CUDA the tensors live
    /// in device memory; fill them with [`write_host`], read them with
    /// [`HostTensor::from_value`].
    pub fn state_allocator(&self) -> Result<Allocator> {
        Allocator::new(&self.inner, self.device_memory()?)
            .ort_context(|| format!("failed to get an allocator for {}", self.device))
    }

    /// The statistics of the arena this session allocates from on its device (`None` when the
    /// allocator keeps none). On the CPU that is the arena every CPU session of the process
    /// shares (see `arena.rs`), so the figures are the process's. On CUDA it is this session's
    /// alone: each session registers its own execution provider, with its own arena, so the
    /// memory a process holds there is the [`MemoryStats::total`] of its sessions' arenas.
    pub fn memory_stats(&self) -> Result<Option<MemoryStats>> {
        let allocator =
            Allocator::new(&self.inner, memory_info(self.device, AllocatorType::Arena)?)
                .ort_context(|| format!("failed to get the arena of {}", self.device))?;
        allocator_stats(&allocator)
    }
}

impl MemoryStats {
    /// Several arenas together: bytes in use, peaks and reserves added up. The sum of the
    /// peaks bounds the peak of all of them at once from above (they need not peak together);
    /// `None` when there is no arena.
    pub fn total(arenas: impl IntoIterator<Item = MemoryStats>) -> Option<MemoryStats> {
        arenas.into_iter().reduce(|a, b| MemoryStats {
            in_use: a.in_use + b.in_use,
            max_in_use: a.max_in_use + b.max_in_use,
            reserved: a.reserved + b.reserved,
        })
    }
}

/// `AllocatorGetStats`, parsed: `InUse`, `MaxInUse`, `TotalAllocated`.
fn allocator_stats(allocator: &Allocator) -> Result<Option<MemoryStats>> {
    let api = ort::api();
    let mut kvps = std::ptr::null_mut();
    // SAFETY: `allocator` is a live ORT allocator; the key-value pairs ORT returns are read while
    // alive (their strings are owned by `kvps`) and released once read. A non-null status is an
    // error we read and release.
    unsafe {
        if let Some(msg) = status_message((api.AllocatorGetStats)(allocator.ptr(), &mut kvps)) {
            // Allocators without an arena have no statistics; ORT says "not implemented".
            if msg.to_ascii_lowercase().contains("not implemented") {
                return Ok(None);
            }
            return Err(Error::Data(format!(
                "cannot read allocator statistics: {msg}"
            )));
        }
        if kvps.is_null() {
            return Ok(None);
        }
        let (mut keys, mut values): (*const *const c_char, *const *const c_char) =
            (std::ptr::null(), std::ptr::null());
        let mut n = 0usize;
        (api.GetKeyValuePairs)(kvps, &mut keys, &mut values, &mut n);
        let mut stats = MemoryStats::default();
        let mut any = false;
        for i in 0..n {
            let key = CStr::from_ptr(*keys.add(i)).to_string_lossy();
            let value: Option<u64> = CStr::from_ptr(*values.add(i))
                .to_str()
                .ok()
                .and_then(|v| v.parse().ok());
            let slot = match key.as_ref() {
                "InUse" => &mut stats.in_use,
                "MaxInUse" => &mut stats.max_in_use,
                "TotalAllocated" => &mut stats.reserved,
                _ => continue,
            };
            if let Some(v) = value {
                *slot = v;
                any = true;
            }
        }
        (api.ReleaseKeyValuePairs)(kvps);
        Ok(any.then_some(stats))
    }
}

/// Copies host data into `dst`, a tensor of the same element type and size on any device
/// (made with [`Session::state_allocator`]): a plain copy in host memory, a host-to-device copy
/// through ONNX Runtime otherwise. For small tensors: the copy goes through a host copy of
/// `src` and `ort`'s identity session, whose arena keeps a temporary of `dst`'s size on the
/// device for the rest of the process ([`DeviceTrainer`](super::DeviceTrainer) copies its
/// state in pieces through its own copy graph instead).
pub fn write_host(dst: &mut DynTensor, src: &HostTensor, name: &str) -> Result<()> {
    let ctx = || format!("failed to write `{name}`");
    if !dst.memory_info().is_cpu_accessible() {
        let staged: DynTensor = src
            .to_value()?
            .downcast::<DynTensorValueType>()
            .ort_context(ctx)?;
        return staged.copy_into(dst).ort_context(ctx);
    }
    macro_rules! copy {
        ($t:ty, $v:expr) => {{
            let (_, out) = dst.try_extract_tensor_mut::<$t>().ort_context(ctx)?;
            if out.len() != $v.len() {
                return Err(Error::Data(format!(
                    "`{name}` has {} elements, {} given",
                    out.len(),
                    $v.len()
                )));
            }
            out.copy_from_slice($v);
        }};
    }
    match src.data() {
        HostData::F32(v) => copy!(f32, v),
        HostData::F32Shared(v) => copy!(f32, v.as_slice()),
        HostData::F64(v) => copy!(f64, v),
        HostData::I64(v) => copy!(i64, v),
        HostData::I32(v) => copy!(i32, v),
        HostData::Bool(v) => copy!(bool, v),
        HostData::I8(v) => copy!(i8, v),
        HostData::U8(v) => copy!(u8, v),
        HostData::Bf16(v) => copy!(half::bf16, v.as_slice()),
        HostData::F16(v) => copy!(half::f16, v.as_slice()),
    }
    Ok(())
}
