//! Benchmarks that print ratios against the reference Python stack measured in the same run:
//! probe throughput ([`probe`]) and LoRA training steps ([`lora`]).
pub mod lora;
pub mod probe;
