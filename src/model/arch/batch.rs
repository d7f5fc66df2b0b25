//! Padded batches of token rows, with their attention masks and per-row rotary positions, and the
//! keys and values of a prefix the rows continue.
use crate::model::kernels;
use crate::util::error::Result;
use candle_core::{DType, Device, Tensor};

/// Rows of token ids of unequal length, left-padded to one length so that every row's last token
/// sits in the same column. Padding is masked out of attention and gets no position.
pub struct Batch {
    pub ids: Tensor,
    pub pad: Vec<usize>,
    pub rows: usize,
    pub len: usize,
    /// The tokens of the prefix every row continues, whose keys and values are already computed
    /// (see [`Kv`]): positions start there.
    pub offset: usize,
    positions: Vec<u32>,
    /// A radix tree run as one flat row (see [`Batch::tree`]): its nodes, and the prefix keys and
    /// values their `KeySource::Ext` runs index (the forward's `prefix` argument).
    pub tree: Option<Vec<kernels::TreeNode>>,
}

/// Keys and values per layer of a prefix that rows continue ([1, kv_heads, len, head_dim]).
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
        Ok(Self { ids, pad, rows: rows.len(), len, offset, positions, tree: None })
    }

    /// The nodes of a radix tree back to back in one row, without padding: `ids` and
    /// `positions` (absolute, per token) of every node, whose attention `nodes` describes
    /// ([`kernels::attend_tree`]). CPU kernel only.
    pub fn tree(ids: Vec<u32>, positions: Vec<u32>, nodes: Vec<kernels::TreeNode>, device: &Device) -> Result<Self> {
        let len = ids.len();
        let ids = Tensor::from_vec(ids, (1, len), device)?;
        Ok(Self { ids, pad: vec![0], rows: 1, len, offset: 0, positions, tree: Some(nodes) })
    }

    /// Flat index (row * len + column) of token `pos` of `row` (unpadded position).
    pub fn flat_index(&self, row: usize, pos: usize) -> u32 {
        (row * self.len + self.pad[row] + pos) as u32
    }

    /// Additive attention mask [rows, 1, len, offset + len]: 0 where query i may see key j,
    /// -inf elsewhere. Keys are the shared prefix, then the row's own tokens.
    /// `window`: keys at most `window - 1` positions back (Gemma's sliding-window layers).
    /// For the composed-ops path (not a tree-shaped batch).
    pub fn mask(&self, window: Option<usize>, device: &Device) -> Result<Tensor> {
        let o = self.offset;
        let (b, t) = (self.rows, self.len);
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
        self.rope_tables_from(&inv, device)
    }

    /// cos and sin tables for the given inverse frequencies (head_dim / 2 of them).
    pub fn rope_tables_from(&self, inv: &[f32], device: &Device) -> Result<(Tensor, Tensor)> {
        let half = inv.len();
        let inv = Tensor::from_slice(inv, (1, half), device)?;
        let pos = Tensor::from_slice(&self.positions, (self.positions.len(), 1), device)?.to_dtype(DType::F32)?;
        let freqs = pos.broadcast_mul(&inv)?.reshape((self.rows, self.len, half))?;
        Ok((freqs.cos()?.contiguous()?, freqs.sin()?.contiguous()?))
    }
}
