//! Where a session runs ([`Device`]) and what a user may ask for ([`DeviceChoice`]).

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// Where a session runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
        match s.parse::<DeviceChoice>() {
            Ok(DeviceChoice::Fixed(d)) => Ok(d),
            _ => Err(Error::Data(format!(
                "unknown device `{s}`; expected cpu, cuda or cuda:N"
            ))),
        }
    }
}

/// A device as a user writes it: a fixed one, or `auto` (CUDA device 0 when a session can be
/// created on it, else the CPU).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// This device, or an error when it cannot be had.
    Fixed(Device),
    /// CUDA device 0 when usable, else the CPU.
    #[default]
    Auto,
}

impl DeviceChoice {
    /// Whether this choice may use CUDA (so the first load of ONNX Runtime should prefer the
    /// CUDA build).
    pub fn may_use_cuda(self) -> bool {
        !matches!(self, DeviceChoice::Fixed(Device::Cpu))
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Fixed(d) => d.fmt(f),
            DeviceChoice::Auto => f.write_str("auto"),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = Error;

    /// Parses `cpu`, `cuda` (device 0), `cuda:N` or `auto`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Fixed(Device::Cpu)),
            "cuda" => Ok(DeviceChoice::Fixed(Device::Cuda(0))),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(|n| DeviceChoice::Fixed(Device::Cuda(n)))
                .ok_or_else(|| {
                    Error::Data(format!(
                        "unknown device `{s}`; expected cpu, cuda, cuda:N or auto"
                    ))
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_print_back() {
        for s in ["cpu", "cuda:0", "cuda:3", "auto"] {
            assert_eq!(s.parse::<DeviceChoice>().unwrap().to_string(), s);
        }
        assert_eq!(
            "cuda".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Fixed(Device::Cuda(0))
        );
        for bad in ["gpu", "cuda:", "cuda:-1", "CUDA", "cuda:x"] {
            let e = bad.parse::<DeviceChoice>().unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("auto"), "{e}");
        }
        assert!("auto".parse::<Device>().is_err());
        assert!(!DeviceChoice::Fixed(Device::Cpu).may_use_cuda());
        assert!(DeviceChoice::Auto.may_use_cuda());
    }
}
