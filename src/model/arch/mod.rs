//! The architectures mores runs, written out in its own code: the Llama-shaped decoder
//! ([`llama`], with the families of [`family`] that share it) and Gemma 3 ([`gemma3`]), the layers
//! they share ([`layers`], [`linear`]) over padded batches ([`batch`]), and the checks on their
//! hyperparameters ([`config`]).
//!
//! A loader (`super::loading`) reads a configuration and hands the architecture a
//! [`Weights`](super::loading::weights::Weights) source; the architecture asks for its tensors by
//! name and builds its layers. [`super::Model`] then runs its forward pass, and LoRA
//! (`super::lora`) reaches its projections through [`linear::Slot`]s.
pub mod batch;
pub mod block;
pub mod config;
pub mod family;
pub mod gemma3;
pub mod head;
pub mod layers;
pub mod linear;
pub mod llama;
