//! Training with the lower decoder layers frozen (LoRA only from layer L up): the hidden states
//! entering layer L depend only on a row's tokens, so they are computed once per row and reused
//! by every later step and epoch. Bounded by memory; a row that does not fit is run whole.
//!
//! Exact, not approximate: the layers below L hold no variable and run as inference, and the
//! batch-invariant kernels give each row the same values whatever batch it is computed in, so a
//! step with kept rows computes the same loss and gradients as one that reruns them (tested).
use super::arch::batch::Batch;
use crate::util::error::Result;
use candle_core::Tensor;
use std::collections::HashMap;

/// Rows computed per pass when filling the store (bounds the pass's memory).
const FILL_ROWS: usize = 8;

pub struct FrozenRows {
    /// The layer whose input is kept; a different first adapted layer empties the store.
    layer: usize,
    rows: HashMap<Vec<u32>, Tensor>,
    bytes: usize,
    cap: usize,
    pub hits: u64,
    pub misses: u64,
}

impl FrozenRows {
    pub fn new(cap_mib: usize) -> Self {
        Self { layer: 0, rows: HashMap::new(), bytes: 0, cap: cap_mib.saturating_mul(1 << 20), hits: 0, misses: 0 }
    }

    /// One line for the training log: how often the kept rows served and how full the store is,
    /// so a run whose rows do not fit (each epoch reruns them) is seen and `frozen_rows_mib` raised.
    pub fn summary(&self) -> String {
        format!(
            "frozen lower layers: {} row passes served from {} kept rows ({} MiB of {}), {} computed",
            self.hits,
            self.rows.len(),
            self.bytes >> 20,
            self.cap >> 20,
            self.misses
        )
    }

    /// Hidden states [rows, len, hidden] entering `layer` for a batch of `rows`, laid out as
    /// `Batch::new(rows)` lays them out (left padding filled with zeros, never read: attention
    /// masks padded keys and every other op is per position). `hidden_before` computes rows that
    /// are not kept.
    pub fn assemble(
        &mut self,
        rows: &[Vec<u32>],
        layer: usize,
        device: &candle_core::Device,
        hidden_before: &dyn Fn(&Batch) -> Result<Tensor>,
    ) -> Result<Tensor> {
        if layer != self.layer {
            self.rows.clear();
            self.bytes = 0;
            self.layer = layer;
        }
        let mut missing: Vec<&Vec<u32>> = Vec::new();
        for r in rows {
            if !self.rows.contains_key(r) && !missing.contains(&r) {
                missing.push(r);
            }
        }
        self.hits += (rows.len() - missing.len()) as u64;
        self.misses += missing.len() as u64;
        let mut fresh: HashMap<&Vec<u32>, Tensor> = HashMap::new();
        for chunk in missing.chunks(FILL_ROWS) {
            let owned: Vec<Vec<u32>> = chunk.iter().map(|r| (*r).clone()).collect();
            let b = Batch::new(&owned, device)?;
            let x = hidden_before(&b)?;
            for (i, r) in chunk.iter().enumerate() {
                fresh.insert(r, x.get(i)?.narrow(0, b.pad[i], r.len())?.contiguous()?);
            }
        }
        let len = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut parts = Vec::with_capacity(rows.len());
        for r in rows {
            let h = match self.rows.get(r) {
                Some(h) => h.clone(),
                None => fresh[r].clone(),
            };
            let pad = len - r.len();
            parts.push(if pad == 0 {
                h
            } else {
                Tensor::cat(&[&Tensor::zeros((pad, h.dim(1)?), h.dtype(), device)?, &h], 0)?
            });
        }
        for (r, h) in fresh {
            let size = h.elem_count() * 4;
            if self.bytes + size <= self.cap {
                self.bytes += size;
                self.rows.insert(r.clone(), h);
            }
        }
        Ok(Tensor::stack(&parts, 0)?)
    }
}
