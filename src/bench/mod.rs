//! Benchmarks that print ratios against the reference Python stack measured in the same run:
//! probe throughput ([`probe`]), teacher decoding ([`generate`]) and LoRA training steps ([`lora`]).
pub mod generate;
pub mod lora;
pub mod probe;

/// The median of repeated measurements (NaN for none).
pub fn median(v: Vec<f64>) -> f64 {
    use statrs::statistics::{Data, Median};
    if v.is_empty() {
        return f64::NAN;
    }
    Data::new(v).median()
}
