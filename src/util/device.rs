//! Where a model runs and in which float type: `--device cpu|cpu-generic|cuda[:N]` (or
//! `[model] device`), `[model] dtype = "f32"|"bf16"|"f16"`.
//!
//! `cpu` runs mores' own CPU kernels (batch-invariant, bit-identical across instruction sets).
//! Every other device runs the device-generic path: candle's tensor ops only, with candle's
//! autograd for training, which is what a GPU runs. `cpu-generic` runs that path on the CPU, so
//! that it can be tested without a GPU; `cuda[:N]` needs a build with `--features cuda`.
use crate::util::error::{Error, Result};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The CPU with mores' kernels.
    #[default]
    Cpu,
    /// The CPU with candle's ops only (the path other devices take).
    CpuGeneric,
    /// CUDA device N (candle's CUDA backend).
    Cuda(usize),
}

impl DeviceSpec {
    /// Whether this device takes the device-generic path.
    pub fn generic(self) -> bool {
        self != DeviceSpec::Cpu
    }

    /// The device kind as caches and manifests name it ("cpu", "cpu-generic", "cuda"): two GPUs
    /// of one kind give the same numbers, so the index is left out.
    pub fn kind(self) -> &'static str {
        match self {
            DeviceSpec::Cpu => "cpu",
            DeviceSpec::CpuGeneric => "cpu-generic",
            DeviceSpec::Cuda(_) => "cuda",
        }
    }

    /// Open the candle device.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu | DeviceSpec::CpuGeneric => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(Error::Invalid(format!(
                        "device cuda:{n}: this mores was built without CUDA: build it with `cargo build --release --features cuda` (scripts/check-cuda-build.sh shows how without a local toolkit), or use --device cpu"
                    )));
                }
                Device::new_cuda(n).map_err(|e| {
                    Error::Invalid(format!(
                        "device cuda:{n} could not be opened ({}): check that `nvidia-smi` lists it and that the NVIDIA driver is loaded, or use --device cpu",
                        one_line(&e.to_string())
                    ))
                })
            }
        }
    }
}

fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            d => f.write_str(d.kind()),
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || {
            format!("device {s:?}: give cpu, cpu-generic, cuda or cuda:N (N the GPU's index, as nvidia-smi lists it)")
        };
        match s.trim() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cpu-generic" => Ok(DeviceSpec::CpuGeneric),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            t => match t.strip_prefix("cuda:") {
                Some(n) => n.parse::<usize>().ok().filter(|&n| n < 1024).map(DeviceSpec::Cuda).ok_or_else(bad),
                None => Err(bad()),
            },
        }
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The float type of a model's dense weights and activations.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum FloatType {
    #[default]
    F32,
    Bf16,
    F16,
}

impl FloatType {
    pub fn dtype(self) -> DType {
        match self {
            FloatType::F32 => DType::F32,
            FloatType::Bf16 => DType::BF16,
            FloatType::F16 => DType::F16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FloatType::F32 => "f32",
            FloatType::Bf16 => "bf16",
            FloatType::F16 => "f16",
        }
    }
}

impl std::str::FromStr for FloatType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "f32" => Ok(FloatType::F32),
            "bf16" => Ok(FloatType::Bf16),
            "f16" => Ok(FloatType::F16),
            _ => Err(format!("dtype {s:?}: give f32, bf16 or f16")),
        }
    }
}

/// Check a device and float type together: half precision runs on the generic path only (mores'
/// CPU kernels are f32), and needs dense weights.
pub fn check(device: DeviceSpec, dtype: FloatType, dense: bool) -> std::result::Result<(), String> {
    if dtype == FloatType::F32 {
        return Ok(());
    }
    if device == DeviceSpec::Cpu {
        return Err(format!(
            "dtype {} needs --device cuda (or cpu-generic, candle's ops on the CPU, slow): mores' CPU kernels are f32",
            dtype.name()
        ));
    }
    if !dense {
        return Err(format!(
            "dtype {} needs weights = \"f32\" (dense weights, converted to {} at load)",
            dtype.name(),
            dtype.name()
        ));
    }
    Ok(())
}

static OVERRIDE: OnceLock<DeviceSpec> = OnceLock::new();

/// The command line's `--device`, which overrides every model section's `device` in this
/// process (set once, before any model is loaded).
pub fn set_override(d: DeviceSpec) {
    let _ = OVERRIDE.set(d);
}

/// A section's device after the command line's override.
pub fn resolve(section: Option<DeviceSpec>) -> DeviceSpec {
    OVERRIDE.get().copied().or(section).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_round_trip_and_bad_ones_are_named() {
        for s in ["cpu", "cpu-generic", "cuda:0", "cuda:3"] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap().to_string(), s);
        }
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        for s in ["gpu", "cuda:", "cuda:-1", "cuda:x", "cuda:99999", ""] {
            let e = s.parse::<DeviceSpec>().unwrap_err();
            assert!(e.contains("cpu-generic") && !e.contains('\n'), "{e}");
        }
        assert!("bf32".parse::<FloatType>().is_err());
        assert!(check(DeviceSpec::Cpu, FloatType::Bf16, true).unwrap_err().contains("cuda"));
        assert!(check(DeviceSpec::Cuda(0), FloatType::F16, false).unwrap_err().contains("weights"));
        assert!(check(DeviceSpec::CpuGeneric, FloatType::Bf16, true).is_ok());
    }

    #[test]
    fn cuda_without_the_feature_is_a_one_line_error() {
        if candle_core::utils::cuda_is_available() {
            return;
        }
        let e = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
        assert!(e.contains("--features cuda") && !e.contains('\n'), "{e}");
    }
}
