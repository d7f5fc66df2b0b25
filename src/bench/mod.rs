//! Benchmarks that print ratios against the reference Python stack measured in the same run:
//! probe throughput ([`probe`]), teacher decoding ([`generate`]) and LoRA training steps ([`lora`]).
pub mod generate;
pub mod lora;
pub mod probe;
