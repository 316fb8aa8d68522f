//! Device selection: `auto | cpu | cuda | cuda:N`. CUDA exists only in builds with the `cuda`
//! feature; `auto` falls back to the CPU with a one-line notice so the same config runs anywhere.

use crate::error::{Error, Result};
use candle_core::Device;

/// A parsed device request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Auto,
    Cpu,
    Cuda(usize),
}

/// Parses a device string.
pub fn parse(s: &str) -> Result<DeviceSpec> {
    match s.trim() {
        "auto" => Ok(DeviceSpec::Auto),
        "cpu" => Ok(DeviceSpec::Cpu),
        "cuda" => Ok(DeviceSpec::Cuda(0)),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
            _ => Err(Error::invalid(
                "device",
                format!("`{other}`: expected auto, cpu, cuda or cuda:N"),
            )),
        },
    }
}

/// Opens the device; `notice` receives the one-line fallback message for `auto`.
pub fn open(s: &str, notice: &mut dyn FnMut(&str)) -> Result<Device> {
    match parse(s)? {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => {
            if !cfg!(feature = "cuda") {
                return Err(Error::Device(format!(
                    "`cuda:{n}` asked for, but this charlab was built without CUDA \
                     (rebuild with `--features cuda`, see scripts/build-cuda.sh)"
                )));
            }
            Device::new_cuda(n).map_err(|e| {
                // Through the library's error, which drops candle's backtrace.
                let e = Error::from(e);
                Error::Device(format!(
                    "cannot open cuda:{n} (is a CUDA GPU visible?): {e}"
                ))
            })
        }
        DeviceSpec::Auto => {
            if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
                if let Ok(d) = Device::new_cuda(0) {
                    return Ok(d);
                }
            }
            notice("device auto: no CUDA device available, using the CPU");
            Ok(Device::Cpu)
        }
    }
}

/// A short human name for a device (`cpu`, `cuda:0`).
pub fn name(d: &Device) -> String {
    match d.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}
