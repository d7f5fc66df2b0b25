//! From files to a model: GGUF files ([`gguf`]), tensors from GGUF or safetensors ([`weights`]),
//! tokenizers built from GGUF metadata or `tokenizer.json` ([`tokenizer`]) and chat templates
//! ([`chat`]).
//!
//! [`super::Model::load`] uses these to build an architecture (`super::arch`); a served model's
//! prompts are rendered with the same tokenizer and chat template ([`super::load_tokenizer`]).
pub mod chat;
pub mod gguf;
pub mod tokenizer;
pub mod weights;
