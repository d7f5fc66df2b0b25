//! One optimizer step: which examples it takes (a seeded permutation per epoch, of records or of
//! whole questions) and its loss and gradients accumulated over micro-batches, with the optional
//! country-deviation term.
use super::examples::{self, Example};
use crate::model::adapter::Adapter;
use crate::model::mode::Mode;
use crate::model::Model;
use crate::util::error::{Error, Result};
use candle_core::Tensor;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// Examples for optimizer step `step`: epoch `step / steps_per_epoch` is a seeded permutation.
pub fn step_indices(n: usize, per_step: usize, seed: u64, step: usize) -> Vec<usize> {
    let spe = n.div_ceil(per_step).max(1);
    let (epoch, within) = (step / spe, step % spe);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D)));
    order[within * per_step..((within + 1) * per_step).min(n)].to_vec()
}

/// Examples for optimizer step `step` when steps hold whole questions: epoch
/// `step / steps_per_epoch` is a seeded permutation of `groups` (each a question's examples), and
/// the step takes `per_step` of them.
pub fn group_step_indices(groups: &[Vec<usize>], per_step: usize, seed: u64, step: usize) -> Vec<usize> {
    step_indices(groups.len(), per_step, seed, step).into_iter().flat_map(|g| groups[g].iter().copied()).collect()
}

/// The training examples' indices by source question (or by question and wording), in order of
/// first appearance.
pub(super) fn question_groups(data: &std::path::Path, exs: &[Example], by_wording: bool) -> Result<Vec<Vec<usize>>> {
    let mut order: Vec<(&str, &str)> = Vec::new();
    let mut by: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    for (i, e) in exs.iter().enumerate() {
        let q = e.question.as_deref().ok_or_else(|| {
            Error::Invalid(format!(
                "{}: train.group = \"{}\", but record {:?} names no question_id (only survey-grounded and soft-label records do)",
                data.display(),
                if by_wording { "wording" } else { "question" },
                e.id
            ))
        })?;
        let key = (q, if by_wording { e.wording.as_deref().unwrap_or("") } else { "" });
        by.entry(key).or_insert_with(|| {
            order.push(key);
            Vec::new()
        });
        by.get_mut(&key).expect("inserted").push(i);
    }
    Ok(order.iter().map(|q| by.remove(q).expect("listed")).collect())
}

pub(super) fn denominators(exs: &[&Example]) -> (f64, f64) {
    let lm: usize = exs.iter().filter(|e| matches!(e.kind, examples::Kind::Tokens(_))).map(|e| e.weight()).sum();
    let kl = exs.iter().filter(|e| matches!(e.kind, examples::Kind::Labels(_))).count();
    (lm.max(1) as f64, kl.max(1) as f64)
}

/// Loss over `exs` with gradients accumulated over micro-batches of `micro`. Returns the step's
/// loss and the gradient of each adapter variable (in `vars` order).
pub fn step_grads(
    model: &Model,
    adapter: &Adapter,
    exs: &[&Example],
    micro: usize,
    dropout_seed: Option<u64>,
) -> Result<(f64, Vec<Tensor>)> {
    step_grads_with(model, adapter, exs, micro, dropout_seed, 0.0).map(|(l, _, g)| (l, g))
}

/// [`step_grads`] with the country-deviation term of weight `deviation` (see
/// [`crate::recipe::TrainSection::deviation`]); returns the loss (KL plus the weighted term), the term's value
/// and the gradients.
///
/// The term couples a step's examples through each question's mean, so it is computed in two
/// passes instead of keeping every micro-batch's graph (16 GB for one 10-option question's 17
/// countries on SmolLM2): a forward pass without gradients gives every example's expected answer
/// e_j and so the term and its derivative c_j = d term / d e_j; the training pass then adds
/// c_j e_j (c_j a constant) to each micro-batch's loss, whose gradient is the term's. Both passes
/// use the same micro-batches and dropout masks.
pub fn step_grads_with(
    model: &Model,
    adapter: &Adapter,
    exs: &[&Example],
    micro: usize,
    dropout_seed: Option<u64>,
    deviation: f64,
) -> Result<(f64, Option<f64>, Vec<Tensor>)> {
    let denom = denominators(exs);
    let vars = adapter.vars();
    let mut acc: Vec<Option<Tensor>> = vec![None; vars.len()];
    let mut sums = examples::LossSums::default();
    // Micro-batches of similar lengths: rows are padded to the longest in their micro-batch.
    // The loss does not depend on the grouping (batch-invariant kernels, f64 sums).
    let exs = by_length(exs);
    let seed_of = |mi: usize| dropout_seed.map(|s| s ^ ((mi as u64 + 1) << 40));
    let labelled = |chunk: &[&Example]| -> Vec<usize> {
        chunk.iter().enumerate().filter(|(_, x)| matches!(x.kind, examples::Kind::Labels(_))).map(|(i, _)| i).collect()
    };
    let (mut dev_value, mut coef) = (None, vec![0.0; exs.len()]);
    if deviation > 0.0 {
        let mut values = Vec::new();
        let mut scratch = examples::LossSums::default();
        for (mi, chunk) in exs.chunks(micro).enumerate() {
            let mode = Mode { grad: false, dropout_seed: seed_of(mi) };
            let (_, e) = examples::batch_loss_parts(model, chunk, mode, denom, &mut scratch, true)?;
            for (i, e) in labelled(chunk).into_iter().zip(e) {
                values.push((mi * micro + i, e.to_scalar::<f32>()? as f64));
            }
        }
        let pairs: Vec<(&Example, f64)> = values.iter().map(|&(i, v)| (exs[i], v)).collect();
        if let Some((v, c)) = deviation_term(&pairs) {
            dev_value = Some(v);
            for (&(i, _), c) in values.iter().zip(c) {
                coef[i] = c * deviation;
            }
        }
    }
    for (mi, chunk) in exs.chunks(micro).enumerate() {
        let (mut l, e) =
            examples::batch_loss_parts(model, chunk, Mode::train(seed_of(mi)), denom, &mut sums, deviation > 0.0)?;
        for (i, e) in labelled(chunk).into_iter().zip(e) {
            let c = coef[mi * micro + i];
            if c != 0.0 {
                l = (l + (e * c)?)?;
            }
        }
        let grads = l.backward()?;
        for (i, v) in vars.iter().enumerate() {
            let g = grads.get(v.as_tensor()).ok_or_else(|| {
                Error::Invalid(format!(
                    "no gradient reached {} (an op without backward is in the training graph)",
                    adapter.named_vars()[i].0
                ))
            })?;
            acc[i] = Some(match acc[i].take() {
                Some(a) => (a + g)?,
                None => g.clone(),
            });
        }
    }
    let loss = sums.loss(denom) + deviation * dev_value.unwrap_or(0.0);
    if !loss.is_finite() {
        let first = exs.first().map(|e| e.id.as_str()).unwrap_or("");
        return Err(Error::Invalid(format!(
            "training loss is {loss} on the step starting at example {first:?}: the model, the adapter or the data hold NaN or inf; nothing of this step was applied"
        )));
    }
    Ok((loss, dev_value, acc.into_iter().map(|g| g.expect("at least one micro-batch")).collect()))
}

/// Fewest countries of a question in a step for its deviation term, and the least human variance
/// (on the 0..1 scale) that counts as the countries differing at all.
const DEVIATION_MIN_COUNTRIES: usize = 3;
const DEVIATION_MIN_VAR: f64 = 1e-6;

/// The country-deviation term over a step's label examples and the student's expected answers
/// `e` (label scale 0..1): per source question with at least three examples,
/// mean_c ((e_c - mean e) - (h_c - mean h))^2 / var(h), h the target's expected answer; averaged
/// over questions. Returns the term and its derivative with respect to each e (in input order;
/// 0 for examples left out). The derivative of the question's mean cancels (the residuals sum to
/// zero), so it is 2 r_c / (n var Q): each country's own deviation, not the typical answer, which
/// is the KL term's job.
pub fn deviation_term(expected: &[(&Example, f64)]) -> Option<(f64, Vec<f64>)> {
    let mut by_q: std::collections::BTreeMap<&str, Vec<(usize, f64, f64)>> = Default::default();
    for (j, (ex, e)) in expected.iter().enumerate() {
        let (Some(q), examples::Kind::Labels(l)) = (&ex.question, &ex.kind) else { continue };
        let h = l.target_expected();
        by_q.entry(q.as_str()).or_default().push((j, h, *e));
    }
    let mut kept = Vec::new();
    for rows in by_q.values() {
        let n = rows.len() as f64;
        if rows.len() < DEVIATION_MIN_COUNTRIES {
            continue;
        }
        let h_mean = rows.iter().map(|r| r.1).sum::<f64>() / n;
        let e_mean = rows.iter().map(|r| r.2).sum::<f64>() / n;
        let var = rows.iter().map(|r| (r.1 - h_mean).powi(2)).sum::<f64>() / n;
        if var < DEVIATION_MIN_VAR {
            continue;
        }
        let res: Vec<(usize, f64)> = rows.iter().map(|r| (r.0, (r.2 - e_mean) - (r.1 - h_mean))).collect();
        kept.push((res, n, var));
    }
    if kept.is_empty() {
        return None;
    }
    let q = kept.len() as f64;
    let mut coef = vec![0.0; expected.len()];
    let mut value = 0.0;
    for (res, n, var) in kept {
        value += res.iter().map(|r| r.1 * r.1).sum::<f64>() / (n * var * q);
        for (j, r) in res {
            coef[j] = 2.0 * r / (n * var * q);
        }
    }
    Some((value, coef))
}

/// `exs` longest row first (stable, so equal lengths keep their order).
pub(super) fn by_length<'a>(exs: &[&'a Example]) -> Vec<&'a Example> {
    let mut v = exs.to_vec();
    v.sort_by_key(|e| std::cmp::Reverse(e.rows.iter().map(|r| r.len()).max().unwrap_or(0)));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(id: &str, q: Option<&str>, wording: &str) -> Example {
        Example {
            id: id.into(),
            question: q.map(String::from),
            wording: Some(wording.into()),
            rows: vec![vec![1, 2]],
            reads: vec![(0, 0)],
            kind: examples::Kind::Tokens(vec![2]),
        }
    }

    /// Steps by question hold every wording of a question; steps by wording split them, in order
    /// of first appearance; a record without a source question is refused by name.
    #[test]
    fn wording_groups_split_a_question_by_its_paraphrases() {
        let exs = [
            ex("q1-USA", Some("q1"), "A"),
            ex("q1-p1-USA", Some("q1"), "B"),
            ex("q2-USA", Some("q2"), "C"),
            ex("q1-DEU", Some("q1"), "A"),
            ex("q1-p1-DEU", Some("q1"), "B"),
        ];
        let data = std::path::Path::new("d.jsonl");
        assert_eq!(question_groups(data, &exs, false).unwrap(), vec![vec![0, 1, 3, 4], vec![2]]);
        assert_eq!(question_groups(data, &exs, true).unwrap(), vec![vec![0, 3], vec![1, 4], vec![2]]);
        let bad = [ex("x", None, "A")];
        let e = question_groups(data, &bad, true).unwrap_err().to_string();
        assert!(e.contains("d.jsonl") && e.contains("\"wording\"") && e.contains("\"x\""), "{e}");
    }
}
