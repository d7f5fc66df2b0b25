//! From files to a model: GGUF files ([`gguf`]), tensors from GGUF or safetensors ([`weights`]),
//! tokenizers built from GGUF metadata or `tokenizer.json` ([`tokenizer`]), chat templates
//! ([`chat`]), and the two loaders that put them together ([`load`]).
//!
//! [`super::Model::load`] calls a loader, which reads the configuration, builds an architecture
//! (`super::arch`) from the weights and returns the model with its tokenizer and chat template; a
//! served model's prompts are rendered with the tokenizer and template alone
//! ([`load::load_tokenizer`]).
pub mod chat;
pub mod gguf;
pub mod load;
pub mod tokenizer;
pub mod weights;
