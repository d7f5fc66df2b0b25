//! Reading GGUF files: header, metadata and tensor table, with the checks that turn a truncated or
//! foreign file into a clear error before any tensor is touched.
use crate::util::error::{Error, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use std::fs::File;
use std::path::{Path, PathBuf};

pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    pub file: File,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = crate::util::io::open_input(path, crate::util::io::Cap::Stream)?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        // candle's reader panics on some hostile headers (an alignment of 0 divides by zero):
        // contain that as an error too, without the panic's own message.
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(&mut file)));
        std::panic::set_hook(prev);
        let read = read.unwrap_or_else(|_| Err(candle_core::Error::Msg("its header is inconsistent".into())));
        let content = read.map_err(|e| {
            Error::model(
                path,
                format!("not a readable GGUF file ({}); if it was downloaded, it may be truncated: run scripts/fetch-models.sh again", crate::util::error::candle_line(&e)),
            )
        })?;
        // candle aligns the tensor data to general.alignment; any other value than a power of two
        // puts every tensor at a wrong offset.
        if let Some(v) = content.metadata.get("general.alignment") {
            let a = to_u64(v).unwrap_or(0);
            if !a.is_power_of_two() || a > 1 << 16 {
                return Err(Error::model(
                    path,
                    format!("invalid GGUF header: general.alignment = {a} (must be a power of two up to 65536)"),
                ));
            }
        }
        // Tensor data lives after the header; a file cut short still parses its header, so check
        // every tensor's extent against the file length here rather than fail mid-load.
        for (name, info) in &content.tensor_infos {
            let block = info.ggml_dtype.block_size();
            // Dimensions from the file: their product must not wrap, and must fill whole blocks.
            let n = info.shape.dims().iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let bytes = n
                .filter(|n| n % block == 0)
                .and_then(|n| (n / block).checked_mul(info.ggml_dtype.type_size()))
                .and_then(|b| u64::try_from(b).ok());
            let end = bytes.and_then(|b| content.tensor_data_offset.checked_add(info.offset)?.checked_add(b));
            let Some(end) = end else {
                return Err(Error::model(
                    path,
                    format!(
                        "invalid GGUF header: tensor {name} has shape {:?}, which no file can hold",
                        info.shape.dims()
                    ),
                ));
            };
            if end > len {
                return Err(Error::model(
                    path,
                    format!(
                        "truncated GGUF: tensor {name} ends at byte {end} but the file has {len} bytes; download it again (scripts/fetch-models.sh checks sha256)"
                    ),
                ));
            }
        }
        Ok(Self { path: path.to_path_buf(), content, file })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    pub fn architecture(&self) -> Result<String> {
        self.string("general.architecture")
    }

    pub fn string(&self, key: &str) -> Result<String> {
        match self.get(key) {
            Some(v) => v.to_string().cloned().map_err(|e| self.bad(key, e)),
            None => Err(self.missing(key)),
        }
    }

    pub fn u32(&self, key: &str) -> Result<u32> {
        match self.get(key) {
            Some(v) => self.checked_u32(key, v),
            None => Err(self.missing(key)),
        }
    }

    /// A metadata integer that must fit u32: negative or larger values are refused by key, never
    /// truncated.
    fn checked_u32(&self, key: &str, v: &Value) -> Result<u32> {
        let x = to_u64(v).ok_or_else(|| self.bad(key, "not a non-negative integer"))?;
        u32::try_from(x).map_err(|_| self.bad(key, format!("{x} is out of range")))
    }

    pub fn f32(&self, key: &str) -> Result<f32> {
        match self.get(key) {
            Some(Value::F32(x)) => Ok(*x),
            Some(Value::F64(x)) => Ok(*x as f32),
            Some(v) => to_u64(v).map(|x| x as f32).ok_or_else(|| self.bad(key, "not a number")),
            None => Err(self.missing(key)),
        }
    }

    /// An optional u32: absent is `None`, present but not a u32 an error naming the key.
    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        self.get(key).map(|v| self.checked_u32(key, v)).transpose()
    }

    pub fn opt_f32(&self, key: &str) -> Option<f32> {
        self.f32(key).ok()
    }

    pub fn opt_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(|v| v.to_bool().ok())
    }

    pub fn strings(&self, key: &str) -> Result<Vec<String>> {
        let v = self.get(key).ok_or_else(|| self.missing(key))?;
        v.to_vec()
            .map_err(|e| self.bad(key, e))?
            .iter()
            .map(|x| x.to_string().cloned().map_err(|e| self.bad(key, e)))
            .collect()
    }

    pub fn f32s(&self, key: &str) -> Result<Vec<f32>> {
        let v = self.get(key).ok_or_else(|| self.missing(key))?;
        v.to_vec().map_err(|e| self.bad(key, e))?.iter().map(|x| x.to_f32().map_err(|e| self.bad(key, e))).collect()
    }

    pub fn i32s(&self, key: &str) -> Result<Vec<i32>> {
        let v = self.get(key).ok_or_else(|| self.missing(key))?;
        v.to_vec()
            .map_err(|e| self.bad(key, e))?
            .iter()
            .map(|x| {
                to_u64(x).map(|u| u as i32).or_else(|| x.to_i32().ok()).ok_or_else(|| self.bad(key, "not an integer"))
            })
            .collect()
    }

    fn missing(&self, key: &str) -> Error {
        Error::model(&self.path, format!("GGUF metadata has no {key}"))
    }

    fn bad(&self, key: &str, e: impl std::fmt::Display) -> Error {
        // The first line: candle appends a backtrace when RUST_BACKTRACE is set.
        let e = e.to_string();
        Error::model(&self.path, format!("GGUF metadata {key}: {}", e.lines().next().unwrap_or_default()))
    }
}

fn to_u64(v: &Value) -> Option<u64> {
    Some(match v {
        Value::U8(x) => *x as u64,
        Value::I8(x) => u64::try_from(*x).ok()?,
        Value::U16(x) => *x as u64,
        Value::I16(x) => u64::try_from(*x).ok()?,
        Value::U32(x) => *x as u64,
        Value::I32(x) => u64::try_from(*x).ok()?,
        Value::U64(x) => *x,
        Value::I64(x) => u64::try_from(*x).ok()?,
        _ => return None,
    })
}
