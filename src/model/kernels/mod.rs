//! The hand-written CPU maths under the forward and backward passes: batch-invariant matrix
//! products ([`matmul`]) and attention ([`attention`], with its fixed-order sums in `sums` and
//! its backward as products in `attn_backward`), mores' own GEMM ([`gemm`], its inner loops in
//! `microkernel`), e^x with the C library's bits ([`exp`]), the gated MLP activations ([`act`]),
//! the training-mode fused ops with a hand-written backward ([`grad_ops`]), a linear layer's
//! training products ([`linear_ops`]), a decoder layer's attention and MLP blocks as single
//! training nodes ([`attn_block`], [`block_ops`]), the output head with the token loss
//! ([`head_ops`]) and the f32 views of candle tensors they all read ([`tensor`]).
//!
//! The architectures (`super::arch`) call these through candle tensors, by the names re-exported
//! here. Every kernel gives each row the same bits whatever batch, padding or prefix it is
//! computed with, and the same bits on every instruction set.
pub mod act;
pub mod attention;
mod attn_backward;
pub mod attn_block;
pub mod block_ops;
pub mod exp;
pub mod gemm;
pub mod grad_ops;
pub mod head_ops;
pub mod linear_ops;
pub mod matmul;
mod microkernel;
mod sums;
pub mod tensor;

pub use attention::{attend, attend_tree, AttnShape, KeySource, PrefixKv, TreeNode};
pub use attn_backward::{attend_backward, AttnOp};
pub use matmul::{invariant_rows, matmul_nt, matmul_packed, pack};
pub use tensor::{cpu_f32, cpu_kernels, generic, plain_cpu_f32, set_generic, with_f32s, GenericScope};
