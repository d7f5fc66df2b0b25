//! Where tensors come from: a GGUF file (quantized, names like `blk.0.attn_q.weight`) or a
//! Hugging Face folder's safetensors (f32/bf16, names like `model.layers.0.self_attn.q_proj.weight`).
//! Architecture files ask for a tensor by both names; each source answers with its own.
use super::gguf::GgufFile;
use crate::util::error::{Error, Result};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use std::path::PathBuf;
use std::sync::Arc;

/// A tensor's two names: Hugging Face checkpoint key and GGUF key.
#[derive(Clone, Copy)]
pub struct Key<'a> {
    pub hf: &'a str,
    pub gguf: &'a str,
}

pub fn key<'a>(hf: &'a str, gguf: &'a str) -> Key<'a> {
    Key { hf, gguf }
}

pub enum Source {
    Gguf(GgufFile),
    Safetensors { path: PathBuf, st: candle_core::safetensors::MmapedSafetensors },
}

pub struct Weights {
    pub source: Source,
    pub device: Device,
    /// The float type dense tensors are converted to (f32 unless the model runs in bf16/f16).
    pub dtype: DType,
    /// Re-quantize Q4_1/Q5_x tensors to Q8_0 at load: candle 0.11 has no SIMD kernel for them.
    pub requantize_slow: bool,
    /// Dequantize every weight to f32 (the trainable form; also a reference for the quantized path).
    pub dequantize: bool,
}

impl Weights {
    /// Whether linear layers come out as f32 tensors (dequantized GGUF, or safetensors).
    pub fn dense(&self) -> bool {
        self.dequantize || !self.is_gguf()
    }

    pub fn is_gguf(&self) -> bool {
        matches!(self.source, Source::Gguf(_))
    }

    pub fn path(&self) -> PathBuf {
        match &self.source {
            Source::Gguf(g) => g.path.clone(),
            Source::Safetensors { path, .. } => path.clone(),
        }
    }

    pub fn has(&self, k: Key) -> bool {
        match &self.source {
            Source::Gguf(g) => g.content.tensor_infos.contains_key(k.gguf),
            Source::Safetensors { st, .. } => st.get(k.hf).is_ok(),
        }
    }

    fn missing(&self, k: Key) -> Error {
        let name = if self.is_gguf() { k.gguf } else { k.hf };
        Error::model(
            self.path(),
            format!("tensor {name} not found: the file does not match the architecture it declares"),
        )
    }

    /// A weight for a linear layer `[out, in]`, kept quantized when the source is.
    pub fn linear(&mut self, k: Key) -> Result<QMatMul> {
        if !self.has(k) {
            return Err(self.missing(k));
        }
        let (requantize, dequantize) = (self.requantize_slow, self.dequantize);
        match &mut self.source {
            Source::Gguf(g) => {
                let q = g.content.tensor(&mut g.file, k.gguf, &self.device)?;
                if dequantize {
                    return Ok(QMatMul::Tensor(q.dequantize(&self.device)?.to_dtype(self.dtype)?));
                }
                let q = match q.dtype() {
                    GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 if requantize => {
                        let f = q.dequantize(&self.device)?;
                        QTensor::quantize(&f, GgmlDType::Q8_0)?
                    }
                    _ => q,
                };
                Ok(QMatMul::from_arc(Arc::new(q))?)
            }
            Source::Safetensors { st, .. } => {
                let t = st.load(k.hf, &self.device)?.to_dtype(self.dtype)?;
                Ok(QMatMul::Tensor(t))
            }
        }
    }

    /// A tensor dequantized to f32 and, when weights load dense and the GGUF stores it as Q8_0,
    /// the stored form too (an output head tied to it multiplies from the int8 values: see
    /// `Linear::with_q8_0`).
    pub fn tensor_and_q8_0(&mut self, k: Key) -> Result<(Tensor, Option<Arc<QTensor>>)> {
        if !self.has(k) {
            return Err(self.missing(k));
        }
        let dense = self.dense();
        match &mut self.source {
            Source::Gguf(g) => {
                let q = g.content.tensor(&mut g.file, k.gguf, &self.device)?;
                let t = q.dequantize(&self.device)?.to_dtype(self.dtype)?;
                Ok((t, (dense && q.dtype() == GgmlDType::Q8_0).then(|| Arc::new(q))))
            }
            Source::Safetensors { st, .. } => Ok((st.load(k.hf, &self.device)?.to_dtype(self.dtype)?, None)),
        }
    }

    /// Any tensor, dequantized to f32.
    pub fn tensor(&mut self, k: Key) -> Result<Tensor> {
        Ok(self.tensor_and_q8_0(k)?.0)
    }
}
