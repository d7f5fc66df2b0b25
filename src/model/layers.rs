//! Pieces shared by the architecture files: padded batches, rotary embeddings with per-row
//! positions, causal (optionally sliding-window) masks, and grouped-query attention.
use crate::error::Result;
use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Module, Tensor, D};

/// Rows of token ids of unequal length, left-padded to one length so that every row's last token
/// sits in the same column. Padding is masked out of attention and gets no position.
pub struct Batch {
    pub ids: Tensor,
    pub pad: Vec<usize>,
    pub rows: usize,
    pub len: usize,
    /// Tokens of a shared prefix whose keys and values are already computed (see [`Kv`]).
    pub offset: usize,
    positions: Vec<u32>,
}

/// Keys and values per layer for a prefix shared by every row ([1, kv_heads, len, head_dim]).
pub struct Kv {
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub len: usize,
}

impl Kv {
    pub fn new() -> Self {
        Kv { k: Vec::new(), v: Vec::new(), len: 0 }
    }

    /// Prepend layer `i`'s prefix keys/values (if any) to a batch's own.
    pub fn extend(&self, i: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        if self.len == 0 {
            return Ok((k, v));
        }
        let b = k.dim(0)?;
        let pk = self.k[i].broadcast_left(b)?.squeeze(1)?;
        let pv = self.v[i].broadcast_left(b)?.squeeze(1)?;
        Ok((
            Tensor::cat(&[&pk.contiguous()?, &k.contiguous()?], 2)?,
            Tensor::cat(&[&pv.contiguous()?, &v.contiguous()?], 2)?,
        ))
    }
}

impl Default for Kv {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    pub fn new(rows: &[Vec<u32>], device: &Device) -> Result<Self> {
        Self::after_prefix(rows, 0, device)
    }

    /// Rows that continue a shared prefix of `offset` tokens: positions start at `offset`.
    pub fn after_prefix(rows: &[Vec<u32>], offset: usize, device: &Device) -> Result<Self> {
        let len = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * len);
        let mut positions = Vec::with_capacity(rows.len() * len);
        let mut pad = Vec::with_capacity(rows.len());
        for r in rows {
            let p = len - r.len();
            pad.push(p);
            ids.extend(std::iter::repeat_n(0u32, p));
            ids.extend_from_slice(r);
            positions.extend(std::iter::repeat_n(0u32, p));
            positions.extend(offset as u32..(offset + r.len()) as u32);
        }
        let ids = Tensor::from_vec(ids, (rows.len(), len), device)?;
        Ok(Self { ids, pad, rows: rows.len(), len, offset, positions })
    }

    /// Flat index (row * len + column) of token `pos` of `row` (unpadded position).
    pub fn flat_index(&self, row: usize, pos: usize) -> u32 {
        (row * self.len + self.pad[row] + pos) as u32
    }

    /// Additive attention mask [rows, 1, len, offset + len]: 0 where query i may see key j,
    /// -inf elsewhere. Keys are the shared prefix, then the row's own tokens.
    /// `window`: keys at most `window - 1` positions back (Gemma's sliding-window layers).
    pub fn mask(&self, window: Option<usize>, device: &Device) -> Result<Tensor> {
        let (b, t, o) = (self.rows, self.len, self.offset);
        let cols = o + t;
        let mut m = vec![f32::NEG_INFINITY; b * t * cols];
        for (r, &p) in self.pad.iter().enumerate() {
            for i in 0..t {
                let row = &mut m[(r * t + i) * cols..(r * t + i + 1) * cols];
                if i < p {
                    row[o + i] = 0.0; // padding query: attend to itself only, never read
                    continue;
                }
                let q = o + i - p; // absolute position of this query
                let visible = |abs_k: usize| window.is_none_or(|w| q - abs_k < w);
                for (j, x) in row[..o].iter_mut().enumerate() {
                    if visible(j) {
                        *x = 0.0;
                    }
                }
                for j in p..=i {
                    if visible(o + j - p) {
                        row[o + j] = 0.0;
                    }
                }
            }
        }
        Ok(Tensor::from_vec(m, (b, 1, t, cols), device)?)
    }

    /// cos and sin tables [rows, len, dim/2] at every token's own position.
    pub fn rope_tables(&self, head_dim: usize, theta: f64, scale: f64, device: &Device) -> Result<(Tensor, Tensor)> {
        let half = head_dim / 2;
        let inv: Vec<f32> =
            (0..half).map(|i| (1.0 / theta.powf(2.0 * i as f64 / head_dim as f64) / scale) as f32).collect();
        let inv = Tensor::from_vec(inv, (1, half), device)?;
        let pos = Tensor::from_slice(&self.positions, (self.positions.len(), 1), device)?.to_dtype(DType::F32)?;
        let freqs = pos.broadcast_mul(&inv)?.reshape((self.rows, self.len, half))?;
        Ok((freqs.cos()?.contiguous()?, freqs.sin()?.contiguous()?))
    }
}

/// Bias-free linear layer over a possibly quantized weight.
#[derive(Debug, Clone)]
pub struct Linear(pub QMatMul);

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.0 {
            // One [rows * len, in] x [in, out] product instead of candle's per-row broadcast
            // matmul: a single large GEMM parallelises far better on CPU.
            QMatMul::Tensor(w) => {
                let dims = x.dims().to_vec();
                let (last, lead) = dims.split_last().expect("at least one dim");
                let n: usize = lead.iter().product();
                let y = x.reshape((n, *last))?.matmul(&w.t()?)?;
                let mut out = lead.to_vec();
                out.push(w.dim(0)?);
                Ok(y.reshape(out)?)
            }
            q => Ok(q.forward(x)?),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f32,
}

impl RmsNorm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps)?)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1): GGUF llama files, whose converter permuted Q and K.
    Interleaved,
    /// Pairs (i, i + d/2): Hugging Face checkpoints, and Gemma in GGUF.
    Halves,
}

pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, style: RopeStyle) -> Result<Tensor> {
    let x = x.contiguous()?;
    Ok(match style {
        RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, cos, sin)?,
        RopeStyle::Halves => candle_nn::rotary_emb::rope(&x, cos, sin)?,
    })
}

/// Scaled dot-product attention with grouped KV heads. q: [b, h, t, d], k/v: [b, kv, s, d],
/// mask: [b, 1, t, s]. Returns [b, t, h * d].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let kv = k.dim(1)?;
    let k = candle_transformers::utils::repeat_kv(k.clone(), h / kv)?.contiguous()?;
    let v = candle_transformers::utils::repeat_kv(v.clone(), h / kv)?.contiguous()?;
    let scores = (q.contiguous()?.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let out = probs.matmul(&v)?;
    Ok(out.transpose(1, 2)?.reshape((b, t, h * d))?)
}

/// Rows `index` of a [rows, len, hidden] activation, as [n, hidden].
pub fn gather(x: &Tensor, index: &Tensor) -> Result<Tensor> {
    let (b, t, hdim) = x.dims3()?;
    Ok(x.reshape((b * t, hdim))?.index_select(index, 0)?)
}

pub fn last_dim(x: &Tensor) -> Result<usize> {
    Ok(x.dim(D::Minus1)?)
}
