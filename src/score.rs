//! Option-label scoring: the probability a model gives to each answer label right after a prompt.
//!
//! Where one label's tokens begin another's ("1" and "10"), the shorter label's probability
//! excludes the continuations that spell the longer one, so the labels' mass never exceeds 1.
//! A label may be reached by several token sequences ("1" and " 1"; "10" is two tokens), so each
//! label's probability is the sum over its distinct sequences of the product of conditional
//! token probabilities. Every prefix that needs a distribution is read from one batched forward
//! pass: the prompt plus the longest continuation of each branch, with logits taken at each
//! position along it. Probabilities are then renormalised over the labels; the mass that fell
//! outside them is kept, since a low mass means the prompt did not elicit an answer.
use crate::model::radix::PrefixCache;
use crate::model::Model;
use crate::util::error::{Error, Result};
use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct ScoreRequest {
    pub prompt: String,
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OptionScores {
    /// Probability of each label before renormalising.
    pub raw: Vec<f64>,
    /// Sum of `raw`: the share of next-token mass that landed on the labels.
    pub mass: f64,
    /// `raw / mass`.
    pub probs: Vec<f64>,
    pub n_tokens: usize,
    /// A served model read by top-k log-probabilities: an upper bound on the label mass that fell
    /// outside the top k and could not be read (absent when every label was read exactly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unread_mass: Option<f64>,
}

/// A backend that scores multiple-choice prompts. One trait at the seam, so a cached or remote
/// scorer can stand in for the in-process model.
pub trait Scorer {
    fn score_batch(&self, items: &[ScoreRequest]) -> Result<Vec<OptionScores>>;

    /// The same numbers, reusing prompt prefixes kept in `cache` from earlier batches (a backend
    /// without such reuse ignores it).
    fn score_batch_cached(&self, items: &[ScoreRequest], _cache: &mut PrefixCache) -> Result<Vec<OptionScores>> {
        self.score_batch(items)
    }
}

/// Token sequences continuing `prompt_ids` for each label: the label and " label", as the
/// tokenizer would split prompt + label, de-duplicated.
pub fn label_sequences(
    model: &Model,
    prompt: &str,
    prompt_ids: &[u32],
    labels: &[String],
) -> Result<Vec<Vec<Vec<u32>>>> {
    label_sequences_with(&model.tok, prompt, prompt_ids, labels)
}

/// [`label_sequences`] with a tokenizer alone (a served model's local copy).
pub fn label_sequences_with(
    tok: &crate::model::tokenizer::Tok,
    prompt: &str,
    prompt_ids: &[u32],
    labels: &[String],
) -> Result<Vec<Vec<Vec<u32>>>> {
    let mut out = Vec::with_capacity(labels.len());
    for label in labels {
        let mut seqs: Vec<Vec<u32>> = Vec::new();
        for v in label_variants(label) {
            let full = tok.encode_prompt(&format!("{prompt}{v}"))?;
            let seq = if full.len() > prompt_ids.len() && full.starts_with(prompt_ids) {
                full[prompt_ids.len()..].to_vec()
            } else {
                // The label merged with the prompt's last token: score the variant on its own.
                tok.encode(&v)?
            };
            if !seq.is_empty() && !seqs.contains(&seq) {
                seqs.push(seq);
            }
        }
        out.push(seqs);
    }
    Ok(out)
}

/// The texts that spell label `label` after a prompt: the label and " label".
pub fn label_variants(label: &str) -> [String; 2] {
    [label.to_string(), format!(" {label}")]
}

/// The label rule on sequence probabilities: per label, the sum over its sequences of each
/// sequence's probability less that of every sequence (of any label) that continues it ("1" then
/// "0" is the answer "10", not "1"), floored at 0. `seqs[l]` are label l's distinct token
/// sequences (ids, or token texts from a server), `p[l][j]` the probability of `seqs[l][j]`.
pub fn label_raw<T: PartialEq>(seqs: &[Vec<Vec<T>>], p: &[Vec<f64>]) -> Vec<f64> {
    let all: Vec<(&Vec<T>, f64)> = seqs.iter().zip(p).flat_map(|(s, p)| s.iter().zip(p.iter().copied())).collect();
    seqs.iter()
        .zip(p)
        .map(|(seqs, p)| {
            seqs.iter()
                .zip(p)
                .map(|(s, &ps)| {
                    let longer: f64 =
                        all.iter().filter(|(o, _)| o.len() > s.len() && o.starts_with(s)).map(|(_, q)| *q).sum();
                    (ps - longer).max(0.0)
                })
                .sum()
        })
        .collect()
}

/// Labels must be distinct and non-blank, and the prompt non-empty: an empty label has no token
/// to score, a repeated one would count its mass twice, and an empty prompt has no context.
pub fn check_request(req: &ScoreRequest) -> Result<()> {
    if req.prompt.is_empty() {
        return Err(Error::Invalid("empty prompt: there is no context to score the labels after".into()));
    }
    check_labels(&req.labels).map_err(Error::Invalid)
}

/// The label rule shared by scoring and datasets.
pub fn check_labels(labels: &[String]) -> std::result::Result<(), String> {
    if labels.is_empty() {
        return Err("no labels to score: give at least one".into());
    }
    if let Some(i) = labels.iter().position(|l| l.trim().is_empty()) {
        return Err(format!("label {} of {:?} is empty or blank", i + 1, labels));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(d) = labels.iter().find(|l| !seen.insert(l.as_str())) {
        return Err(format!("label {d:?} appears twice in {labels:?}"));
    }
    Ok(())
}

/// The token rows and read positions that score one request.
pub struct Plan {
    pub prompt_ids: Vec<u32>,
    /// Per label, its distinct token sequences.
    pub seqs: Vec<Vec<Vec<u32>>>,
    /// Continuations to run after the prompt (maximal branches of the label trie).
    pub branches: Vec<Vec<u32>>,
}

/// Rows (prompt + branch), read positions (row, position) within them, and for each context
/// (tokens after the prompt) the index of the read that gives its next-token distribution.
pub type PlanLayout = (Vec<Vec<u32>>, Vec<(usize, usize)>, HashMap<Vec<u32>, usize>);

impl Plan {
    pub fn layout(&self) -> PlanLayout {
        let (mut rows, mut reads, mut map) = (Vec::new(), Vec::new(), HashMap::new());
        for branch in &self.branches {
            let row = rows.len();
            let mut ids = self.prompt_ids.clone();
            ids.extend_from_slice(branch);
            rows.push(ids);
            for k in 0..=branch.len() {
                if let std::collections::hash_map::Entry::Vacant(e) = map.entry(branch[..k].to_vec()) {
                    e.insert(reads.len());
                    reads.push((row, self.prompt_ids.len() - 1 + k));
                }
            }
        }
        (rows, reads, map)
    }

    /// For each sequence (flattened over labels), the sequences of other labels that continue it.
    pub fn longer(&self) -> Vec<Vec<usize>> {
        let all: Vec<&Vec<u32>> = self.seqs.iter().flatten().collect();
        all.iter()
            .map(|s| (0..all.len()).filter(|&j| all[j].len() > s.len() && all[j].starts_with(s)).collect())
            .collect()
    }

    pub fn new(model: &Model, req: &ScoreRequest) -> Result<Self> {
        check_request(req)?;
        let prompt_ids = model.tok.encode_prompt(&req.prompt)?;
        let seqs = label_sequences(model, &req.prompt, &prompt_ids, &req.labels)?;
        let mut contexts: Vec<Vec<u32>> = seqs.iter().flatten().map(|s| s[..s.len() - 1].to_vec()).collect();
        contexts.sort_by_key(|c| std::cmp::Reverse(c.len()));
        let mut branches: Vec<Vec<u32>> = Vec::new();
        for c in contexts {
            if !branches.iter().any(|b| b.starts_with(&c)) {
                branches.push(c);
            }
        }
        Ok(Self { prompt_ids, seqs, branches })
    }
}

impl Scorer for Model {
    fn score_batch(&self, items: &[ScoreRequest]) -> Result<Vec<OptionScores>> {
        self.score_batch_cached(items, &mut PrefixCache::new(0))
    }

    fn score_batch_cached(&self, items: &[ScoreRequest], cache: &mut PrefixCache) -> Result<Vec<OptionScores>> {
        let _kernels = self.kernel_scope();
        let plans: Vec<Plan> = items.iter().map(|r| Plan::new(self, r)).collect::<Result<_>>()?;
        let mut rows: Vec<Vec<u32>> = Vec::new();
        let mut reads: Vec<(usize, usize)> = Vec::new();
        // (item, context) -> index into `reads`
        let mut where_read: Vec<HashMap<Vec<u32>, usize>> = Vec::with_capacity(plans.len());
        for plan in &plans {
            let (r, rd, map) = plan.layout();
            let (row0, read0) = (rows.len(), reads.len());
            rows.extend(r);
            reads.extend(rd.into_iter().map(|(row, pos)| (row0 + row, pos)));
            where_read.push(map.into_iter().map(|(k, v)| (k, read0 + v)).collect());
        }
        let logits = self.logits_at_cached(&rows, &reads, cache)?;
        let width = logits.dim(1)?;
        if let Some(t) = plans.iter().flat_map(|p| p.seqs.iter().flatten().flatten()).find(|&&t| t as usize >= width) {
            return Err(Error::model(
                &self.info.path,
                format!("token id {t} is outside the output head's {width} rows: tokenizer and weights do not match"),
            ));
        }
        // Every (read, token) whose log-probability a label sequence needs.
        let mut want: Vec<(usize, u32)> = Vec::new();
        for (plan, map) in plans.iter().zip(&where_read) {
            for s in plan.seqs.iter().flatten() {
                want.extend((0..s.len()).map(|i| (map[&s[..i].to_vec()], s[i])));
            }
        }
        want.sort_unstable();
        want.dedup();
        let (values, nan_row) = label_log_softmax(&logits, &want)?;
        // A NaN anywhere in the forward pass (a NaN epsilon, a broken adapter) must not turn into
        // finite-looking probabilities: stop, naming the model and the prompt.
        if let Some(r) = nan_row {
            let item = where_read.iter().position(|m| m.values().any(|&v| v == r)).unwrap_or(0);
            let adapter =
                self.info.adapter.as_ref().map(|a| format!(" with adapter {}", a.path.display())).unwrap_or_default();
            return Err(Error::model(
                &self.info.path,
                format!(
                    "non-finite logits{adapter} for prompt {:?}: the weights or the adapter hold NaN or inf",
                    items[item].prompt.chars().take(60).collect::<String>()
                ),
            ));
        }
        let logp: HashMap<(usize, u32), f32> = want.into_iter().zip(values).collect();
        let mut out = Vec::with_capacity(plans.len());
        for (plan, map) in plans.iter().zip(&where_read) {
            let seq_p = |s: &Vec<u32>| -> f64 {
                (0..s.len()).map(|i| logp[&(map[&s[..i].to_vec()], s[i])] as f64).sum::<f64>().exp()
            };
            // "1" followed by "0" is the answer "10", not "1" (the rule training uses too).
            let p: Vec<Vec<f64>> = plan.seqs.iter().map(|seqs| seqs.iter().map(seq_p).collect()).collect();
            let raw = label_raw(&plan.seqs, &p);
            let mass: f64 = raw.iter().sum();
            let probs = raw.iter().map(|r| if mass > 0.0 { r / mass } else { f64::NAN }).collect();
            out.push(OptionScores { raw, mass, probs, n_tokens: plan.prompt_ids.len(), unread_mass: None });
        }
        Ok(out)
    }
}

/// candle's `log_softmax(logits, D::Minus1)` at the `want`ed (row, token) entries only, with its
/// arithmetic step for step: the row's max, d = x - max, the sum of exp(d) by candle's own
/// reduction, then d - ln(sum). Same bits, without the four [rows, vocab] tensors (84 MB each
/// for a batch of Gemma's 262k-entry rows) that the full op builds, faults in and copies out.
/// Also returns the first row holding a NaN (its sum is NaN exactly when one of its logits, and
/// so one of its log-probabilities, is NaN). Off the CPU the full op runs as before.
fn label_log_softmax(logits: &Tensor, want: &[(usize, u32)]) -> Result<(Vec<f32>, Option<usize>)> {
    use candle_core::cpu::kernels::VecOps;
    use rayon::prelude::*;
    let (rows, width) = logits.dims2()?;
    if !crate::model::kernels::cpu_kernels(logits.device()) {
        let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?.to_vec2::<f32>()?;
        let nan_row = logp.iter().position(|r| r.iter().any(|x| x.is_nan()));
        return Ok((want.iter().map(|&(r, t)| logp[r][t as usize]).collect(), nan_row));
    }
    let logits = logits.contiguous()?;
    crate::model::kernels::with_f32s(&[&logits], |v| {
        let x = v[0];
        // Per row: (max, ln(sum of exp(x - max))).
        let stats: Vec<(f32, f32)> = (0..rows)
            .into_par_iter()
            .map_init(
                || vec![0f32; width],
                |e, r| {
                    let row = &x[r * width..(r + 1) * width];
                    let mut max = 0f32;
                    let mut sum = 0f32;
                    // SAFETY: `row` and `e` hold `width` values; width >= 1 (a vocabulary).
                    unsafe { f32::vec_reduce_max(row.as_ptr(), &mut max, width) };
                    for (ei, &xi) in e.iter_mut().zip(row) {
                        *ei = xi - max;
                    }
                    // expf's bits, vectorised.
                    crate::model::exp::exp_in_place(e);
                    unsafe { f32::vec_reduce_sum(e.as_ptr(), &mut sum, width) };
                    (max, sum.ln())
                },
            )
            .collect();
        let nan_row = stats.iter().position(|s| s.1.is_nan());
        let values = want.iter().map(|&(r, t)| (x[r * width + t as usize] - stats[r].0) - stats[r].1).collect();
        (values, nan_row)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The label log-probabilities read off the logits are candle's full log_softmax at those
    /// entries, bit for bit (a vocabulary-sized row, widths with and without a SIMD tail), and a
    /// NaN row is reported as such.
    #[test]
    fn label_log_softmax_is_candles_log_softmax_bit_for_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for width in [1usize, 37, 4096, 49_157] {
            let rows = 5;
            let x: Vec<f32> = (0..rows * width).map(|_| rng.random_range(-30.0f32..30.0)).collect();
            let logits = Tensor::from_vec(x, (rows, width), &candle_core::Device::Cpu).unwrap();
            let full = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap().to_vec2::<f32>().unwrap();
            let want: Vec<(usize, u32)> =
                (0..rows).flat_map(|r| [0, width / 2, width - 1].map(|t| (r, t as u32))).collect();
            let (got, nan_row) = label_log_softmax(&logits, &want).unwrap();
            assert_eq!(nan_row, None);
            for (&(r, t), g) in want.iter().zip(got) {
                assert_eq!(g.to_bits(), full[r][t as usize].to_bits(), "width {width}, row {r}, token {t}");
            }
        }
        let mut x = vec![0.5f32; 3 * 8];
        x[2 * 8 + 3] = f32::NAN;
        let logits = Tensor::from_vec(x, (3, 8), &candle_core::Device::Cpu).unwrap();
        assert_eq!(label_log_softmax(&logits, &[(0, 1)]).unwrap().1, Some(2));
    }
}
