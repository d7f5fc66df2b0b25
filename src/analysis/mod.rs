//! From scored samples to numbers: Pearson / Spearman / JSD / Wasserstein maths and bootstrap CIs
//! ([`correlate`]), option orders and templates averaged per item ([`combine`]), the baselines a
//! result is read against ([`baseline`]), the per-country, per-group and per-question numbers of
//! one set of items ([`aggregate`]), a probe's results end to end ([`compute`]) and their types
//! ([`results`]).
mod aggregate;
pub mod baseline;
pub mod combine;
pub mod compute;
pub mod correlate;
pub mod results;
