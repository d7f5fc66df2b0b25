//! How a forward pass runs: with or without gradients, with or without LoRA dropout.

/// How a forward pass runs. `grad`: build a graph that gradients can flow through (explicit ops
/// instead of candle's fused kernels, which have no backward; frozen weights that pass only the
/// input gradient). `dropout_seed`: apply LoRA dropout with masks drawn from this seed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mode {
    pub grad: bool,
    pub dropout_seed: Option<u64>,
}

impl Mode {
    pub const INFER: Mode = Mode { grad: false, dropout_seed: None };
    pub fn train(dropout_seed: Option<u64>) -> Self {
        Mode { grad: true, dropout_seed }
    }
}
