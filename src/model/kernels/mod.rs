//! The hand-written CPU maths under the forward and backward passes: batch-invariant matrix
//! products and attention ([`attention`], re-exported here), mores' own GEMM ([`gemm`]), e^x with
//! the C library's bits ([`exp`]), the gated MLP activations ([`act`]) and the training-mode
//! fused ops with a hand-written backward ([`grad_ops`]).
//!
//! The architectures (`super::arch`) call these through candle tensors; every kernel gives each
//! row the same bits whatever batch, padding or prefix it is computed with, and the same bits on
//! every instruction set.
pub mod act;
pub mod attention;
pub mod exp;
pub mod gemm;
pub mod grad_ops;

pub use attention::{
    attend, attend_backward, attend_tree, cpu_f32, invariant_rows, matmul_nt, matmul_packed, pack, plain_cpu_f32,
    with_f32s, AttnOp, AttnShape, KeySource, PrefixKv, TreeNode,
};
