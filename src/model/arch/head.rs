//! The output head with the token cross-entropy as one training node
//! ([`crate::model::kernels::head_ops`]) for the llama-shaped decoder: where the head is a plain
//! f32 CPU weight without bias or adapter, a step's token loss is computed from the final-norm
//! hidden rows without a logits tensor in the graph.
use super::batch::Batch;
use super::layers::gather;
use super::linear::Linear;
use super::llama::Model;
use crate::model::kernels::{self, head_ops::HeadNll};
use crate::model::mode::Mode;
use crate::util::error::Result;
use candle_core::quantized::QMatMul;
use candle_core::Tensor;

/// The head's weight when it qualifies.
fn plain_head(head: &Linear) -> Option<&Tensor> {
    match (&head.base, &head.bias, &head.lora) {
        (QMatMul::Tensor(w), None, None) if kernels::plain_cpu_f32(&[w]) => Some(w),
        _ => None,
    }
}

impl Model {
    /// Whether [`Model::token_nll`] applies in `mode`.
    pub fn fused_head(&self, mode: Mode) -> bool {
        mode.grad && super::block::fused_blocks() && plain_head(&self.lm_head).is_some()
    }

    /// Per-read NLL of `targets` [n] at the flat positions `read`, from hidden states `x` entering
    /// decoder layer `layer` (the embedding for layer 0): layers, final norm, head and
    /// cross-entropy, the last two as one node.
    pub fn token_nll(
        &self,
        batch: &Batch,
        layer: usize,
        x: Tensor,
        read: &Tensor,
        targets: &[u32],
        mode: Mode,
    ) -> Result<Tensor> {
        let (x, _) = self.run_layers(batch, &[], x, layer..self.cfg.num_hidden_layers, false, mode)?;
        let xn = self.norm.forward(&gather(&x, read)?, mode)?;
        let w = plain_head(&self.lm_head)
            .ok_or_else(|| crate::util::error::Error::Invalid("internal: head not fusable".into()))?;
        let op = HeadNll::new(w.clone(), self.lm_head.packed(w)?, targets.to_vec());
        Ok(xn.contiguous()?.apply_op1(op)?)
    }
}
