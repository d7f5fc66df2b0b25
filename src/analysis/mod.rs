//! From scored samples to numbers: Pearson / Spearman / JSD / Wasserstein maths and bootstrap CIs
//! ([`correlate`]), option orders and templates averaged per item ([`combine`]), the baselines a
//! result is read against ([`baseline`]), the per-country, per-group and per-question numbers of
//! one set of items ([`aggregate`]), and the typed results of a probe ([`results`]).
mod aggregate;
pub mod baseline;
pub mod combine;
pub mod correlate;
pub mod results;
