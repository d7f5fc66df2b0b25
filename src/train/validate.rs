//! Validation during training: which records are held out (single records, whole source
//! questions, or whole question families (WVS batteries) so that validation asks new questions
//! as the transfer probe does), what is measured on them (the loss, and for label examples the
//! country-level fit: the Pearson r across countries between the student's and the humans'
//! expected answers), and early stopping on either, which keeps the best validated adapter
//! instead of the last.
use super::examples::{self, Example, Kind};
use crate::analysis::correlate::{fisher_mean, pearson};
use crate::generate::dataset::Record;
use crate::model::mode::Mode;
use crate::model::Model;
use crate::recipe::{Select, ValSplit};
use crate::util::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// What the validation split keys a record on, so that a whole group falls on one side.
pub struct ValKeys {
    split: ValSplit,
    /// Question id to its family (first member's id); only for `ValSplit::Family`.
    family: BTreeMap<String, String>,
    /// Where the families came from, for errors.
    survey: String,
}

impl ValKeys {
    /// Keys by record or by question; a family split is built by `families`.
    pub fn new(split: ValSplit) -> Self {
        Self { split, family: BTreeMap::new(), survey: String::new() }
    }

    /// Families of the survey at `dir`, found as the held-out split finds them (word `n`-gram
    /// containment at `threshold`), so validation holds out whole batteries as the test split does.
    pub fn families(dir: &Path, n: usize, threshold: f64) -> Result<Self> {
        let survey = crate::survey::Survey::load(dir)?;
        Ok(Self {
            split: ValSplit::Family,
            family: crate::generate::leak::families(&survey, n, threshold),
            survey: dir.display().to_string(),
        })
    }

    /// A record's key: its id ("record", or a record without a source question), its source
    /// question ("question") or that question's family ("family").
    pub fn key(&self, r: &Record) -> Result<String> {
        Ok(match (self.split, &r.question_id) {
            (ValSplit::Record, _) | (_, None) => r.id.clone(),
            (ValSplit::Question, Some(q)) => format!("question:{q}"),
            (ValSplit::Family, Some(q)) => match self.family.get(q) {
                Some(f) => format!("family:{f}"),
                None => {
                    return Err(Error::Invalid(format!(
                        "record {:?} names question {q:?}, which is no scored question of the survey in {} (train.val_split = \"family\" groups by its batteries); generate the data from that survey or use val_split = \"question\"",
                        r.id, self.survey
                    )))
                }
            },
        })
    }

    /// Whether `r` is held out for validation: a seeded hash of its key below `fraction`.
    /// Independent of file order.
    pub fn held_out(&self, seed: u64, r: &Record, fraction: f64) -> Result<bool> {
        Ok(super::is_val(seed, &self.key(r)?, fraction))
    }
}

/// What one validation pass measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Validation {
    pub loss: f64,
    /// Fisher mean of the per-(question, wording) cross-country r; None without such a pair.
    pub country_r: Option<f64>,
}

impl Validation {
    /// The figure `select` follows, larger is better.
    pub fn score(&self, select: Select) -> Option<f64> {
        match select {
            Select::Loss => Some(-self.loss),
            Select::CountryR => self.country_r,
        }
    }
}

/// Loss and country-level fit over `exs` without gradients (the probe's numerics), in
/// micro-batches of `micro`.
pub fn validate(model: &Model, exs: &[&Example], micro: usize) -> Result<Validation> {
    let denom = super::step::denominators(exs);
    let mut sums = examples::LossSums::default();
    let mut expected = Vec::new();
    for chunk in super::step::by_length(exs).chunks(micro) {
        let (_, e) = examples::batch_loss_parts(model, chunk, Mode::INFER, denom, &mut sums, true)?;
        let labelled = chunk.iter().filter(|x| matches!(x.kind, Kind::Labels(_)));
        for (ex, e) in labelled.zip(e) {
            expected.push((*ex, e.to_scalar::<f32>()? as f64));
        }
    }
    Ok(Validation { loss: sums.loss(denom), country_r: country_r(&expected) })
}

/// The label examples of `exs` by (source question, wording), in key order; examples without a
/// source question are left out.
fn by_wording<'a, T>(
    exs: impl Iterator<Item = (&'a Example, T)>,
) -> BTreeMap<(&'a str, &'a str), Vec<(&'a Example, T)>> {
    let mut by: BTreeMap<(&str, &str), Vec<(&Example, T)>> = BTreeMap::new();
    for (ex, v) in exs {
        if let (Some(q), Kind::Labels(_)) = (&ex.question, &ex.kind) {
            by.entry((q.as_str(), ex.wording.as_deref().unwrap_or(""))).or_default().push((ex, v));
        }
    }
    by
}

/// Fisher mean over (question, wording) pairs of Pearson r, across the pair's examples (one per
/// country), between the student's expected answer `e` and the target's; pairs with fewer than 3
/// countries or no spread on either side are left out (as in the transfer report).
pub fn country_r(expected: &[(&Example, f64)]) -> Option<f64> {
    let rs: Vec<f64> = by_wording(expected.iter().map(|(x, e)| (*x, *e)))
        .values()
        .filter_map(|rows| {
            let student: Vec<f64> = rows.iter().map(|r| r.1).collect();
            let human: Vec<f64> = rows.iter().map(|r| target_expected(r.0)).collect();
            pearson(&student, &human)
        })
        .collect();
    fisher_mean(&rs)
}

/// Whether `exs` hold a (question, wording) pair in at least 3 countries, so `country_r` is
/// defined once the student's answers vary.
pub fn has_country_pairs(exs: &[Example]) -> bool {
    by_wording(exs.iter().map(|x| (x, ()))).values().any(|rows| rows.len() >= 3)
}

/// The target's expected answer of a label example (`by_wording` keeps only those).
fn target_expected(ex: &Example) -> f64 {
    match &ex.kind {
        Kind::Labels(l) => l.target_expected(),
        Kind::Tokens(_) => 0.0,
    }
}

/// Early stopping's bookkeeping, kept in the trainer state so a resumed run stops where the
/// uninterrupted one would.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EarlyStop {
    /// Step count after which the best validation so far was measured, and its score.
    pub best_step: Option<usize>,
    pub best: Option<f64>,
    /// Validations since the best one.
    pub since_best: usize,
    /// Training stopped for want of improvement; a resume runs no further steps.
    pub stopped: bool,
}

impl EarlyStop {
    /// Records a validation score after `step` steps; returns whether it is the best so far
    /// (strictly better than every earlier one).
    pub fn observe(&mut self, step: usize, score: f64) -> bool {
        if self.best.is_none_or(|b| score > b) {
            self.best = Some(score);
            self.best_step = Some(step);
            self.since_best = 0;
            true
        } else {
            self.since_best += 1;
            false
        }
    }

    /// Whether `patience` validations in a row have not improved on the best (never with 0).
    pub fn exhausted(&self, patience: usize) -> bool {
        patience > 0 && self.since_best >= patience
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use examples::LabelLoss;

    fn labelled(q: &str, wording: &str, target: Vec<f64>) -> Example {
        Example {
            id: format!("{q}-{wording}"),
            question: Some(q.into()),
            wording: Some(wording.into()),
            rows: vec![vec![1]],
            reads: vec![(0, 0)],
            kind: Kind::Labels(LabelLoss { seqs: vec![], label_of: vec![], longer: vec![], target }),
        }
    }

    /// Each (question, wording) pair is correlated across its countries on its own, pairs of
    /// fewer than 3 countries and text examples are left out, and the pairs are Fisher-averaged.
    #[test]
    fn country_r_correlates_each_wording_across_countries() {
        let targets = [vec![1.0, 0.0], vec![0.5, 0.5], vec![0.0, 1.0]]; // expected 0, 0.5, 1
        let a: Vec<Example> = targets.iter().map(|t| labelled("q1", "A", t.clone())).collect();
        let b: Vec<Example> = targets.iter().map(|t| labelled("q1", "B", t.clone())).collect();
        let short: Vec<Example> = targets[..2].iter().map(|t| labelled("q2", "A", t.clone())).collect();
        let text = Example { kind: Kind::Tokens(vec![3]), ..labelled("q3", "A", vec![]) };
        let mut pairs: Vec<(&Example, f64)> = a.iter().zip([0.1, 0.2, 0.3]).collect();
        pairs.extend(b.iter().zip([0.3, 0.1, 0.2])); // r = -0.5 by hand
        pairs.extend(short.iter().zip([0.9, 0.1]));
        pairs.push((&text, 0.5));
        let r = country_r(&pairs).unwrap();
        let want = fisher_mean(&[1.0, -0.5]).unwrap();
        assert!((r - want).abs() < 1e-12, "{r} vs {want}");
        assert!(country_r(&pairs[6..]).is_none());
        let mut exs = short.clone();
        assert!(!has_country_pairs(&exs));
        exs.push(labelled("q2", "A", vec![0.2, 0.8]));
        assert!(has_country_pairs(&exs));
    }

    fn record(id: &str, q: Option<&str>) -> Record {
        serde_json::from_value(
            serde_json::json!({"id": id, "question_id": q, "prompt": "p", "labels": ["1", "2"], "target": [0.5, 0.5]}),
        )
        .unwrap()
    }

    /// By question, every record of a question falls on the same side (and a record without one
    /// is split by its id); by record, a question's records are split independently.
    #[test]
    fn question_split_holds_out_whole_questions() {
        let ids: Vec<String> = (0..40).map(|i| format!("Q{}-c{i}", i % 8)).collect();
        let side = |split, r: &Record| ValKeys::new(split).held_out(5, r, 0.4).unwrap();
        for q in 0..8 {
            let rs: Vec<Record> = ids
                .iter()
                .filter(|id| id.starts_with(&format!("Q{q}-")))
                .map(|id| record(id, Some(&format!("Q{q}"))))
                .collect();
            assert!(rs.iter().all(|r| side(ValSplit::Question, r) == side(ValSplit::Question, &rs[0])));
        }
        let by_record: Vec<bool> = ids.iter().map(|id| side(ValSplit::Record, &record(id, Some("Q0")))).collect();
        assert!(by_record.iter().any(|&b| b) && by_record.iter().any(|&b| !b));
        let none = record("loose", None);
        assert_eq!(side(ValSplit::Question, &none), side(ValSplit::Record, &none));
    }

    /// Patience counts validations since the best, a tie is no improvement, and 0 never stops.
    #[test]
    fn early_stop_waits_patience_validations_after_the_best() {
        let mut e = EarlyStop::default();
        assert!(e.observe(10, -1.0));
        assert!(e.observe(20, -0.5));
        assert!(!e.observe(30, -0.5));
        assert!(!e.exhausted(2));
        assert!(!e.observe(40, -0.7));
        assert!(e.exhausted(2) && !e.exhausted(3) && !e.exhausted(0));
        assert_eq!((e.best_step, e.best), (Some(20), Some(-0.5)));
        assert!(e.observe(50, 0.1));
        assert!(!e.exhausted(1));
    }
}
