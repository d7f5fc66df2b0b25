//! From scored prompts to one score per item. An item, a (question, country) pair, is asked in
//! several option orders and templates; their option probabilities (in the question's own option
//! order) are averaged, orders first, then templates with equal weight. Also what the orders
//! reveal: position bias and how far an expected score moves when only the order changes.
use crate::analysis::correlate::mean;
use crate::probe::Sample;
use crate::survey::Survey;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Element-wise mean of equally long vectors.
fn mean_vec<'a>(vs: impl Iterator<Item = &'a [f64]>) -> Vec<f64> {
    let mut acc: Vec<f64> = Vec::new();
    let mut n = 0usize;
    for v in vs {
        if acc.is_empty() {
            acc = vec![0.0; v.len()];
        }
        for (a, x) in acc.iter_mut().zip(v) {
            *a += x;
        }
        n += 1;
    }
    acc.iter().map(|a| a / n.max(1) as f64).collect()
}

fn average(group: &[&Sample], survey: &Survey, template: &str) -> Sample {
    let first = group[0];
    let probs = mean_vec(group.iter().map(|s| s.probs.as_slice()));
    let expected_score = survey.question(&first.question_id).ok().and_then(|q| q.expected_score(&probs));
    Sample {
        id: crate::prompt::prompt_id(
            &first.question_id,
            (!first.country.is_empty()).then_some(first.country.as_str()),
            template,
            "",
        ),
        template: template.to_string(),
        order: vec![],
        position_probs: vec![],
        raw: mean_vec(group.iter().map(|s| s.raw.as_slice())),
        mass: mean(&group.iter().map(|s| s.mass).collect::<Vec<_>>()).unwrap_or(f64::NAN),
        unread_mass: first.unread_mass.and(mean(&group.iter().filter_map(|s| s.unread_mass).collect::<Vec<_>>())),
        expected_score,
        probs,
        ..first.clone()
    }
}

/// Keeps first-seen order of keys.
fn group_by<'a>(samples: impl Iterator<Item = &'a Sample>, key: impl Fn(&Sample) -> String) -> Vec<Vec<&'a Sample>> {
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut groups: Vec<Vec<&Sample>> = Vec::new();
    for s in samples {
        let k = key(s);
        let i = *index.entry(k).or_insert_with(|| {
            groups.push(vec![]);
            groups.len() - 1
        });
        groups[i].push(s);
    }
    groups
}

/// One sample per (question, country) of the persona templates: `template: Some(name)` averages
/// that template's orders; `None` averages every persona template (the ensemble). Country-blind
/// prompts (no country) are left out; see [`blind`].
pub fn items(samples: &[Sample], survey: &Survey, template: Option<&str>) -> Vec<Sample> {
    let persona = samples.iter().filter(|s| !s.country.is_empty() && template.is_none_or(|t| s.template == t));
    collapse(persona, survey)
}

/// One sample per question of the country-blind template, averaged over orders.
pub fn blind(samples: &[Sample], survey: &Survey) -> Vec<Sample> {
    collapse(samples.iter().filter(|s| s.country.is_empty()), survey)
}

fn collapse<'a>(samples: impl Iterator<Item = &'a Sample>, survey: &Survey) -> Vec<Sample> {
    let per_template: Vec<Sample> =
        group_by(samples, |s| format!("{}\u{1f}{}\u{1f}{}", s.question_id, s.country, s.template))
            .iter()
            .map(|g| average(g, survey, &g[0].template))
            .collect();
    group_by(per_template.iter(), |s| format!("{}\u{1f}{}", s.question_id, s.country))
        .iter()
        .map(|g| {
            let name = if g.len() == 1 { g[0].template.clone() } else { "ensemble".to_string() };
            average(g, survey, &name)
        })
        .collect()
}

/// Mean probability by position shown, for prompts with `k` options.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PositionBias {
    pub k: usize,
    pub prompts: usize,
    pub mean_prob: Vec<f64>,
}

/// Over every scored prompt, grouped by number of options. With balanced orders each option
/// sits in each position equally often, so unequal means are a preference for positions.
pub fn position_bias(samples: &[Sample]) -> Vec<PositionBias> {
    let mut by_k: BTreeMap<usize, Vec<&[f64]>> = BTreeMap::new();
    for s in samples {
        let p = s.by_position();
        if !p.is_empty() {
            by_k.entry(p.len()).or_default().push(p);
        }
    }
    by_k.into_iter().map(|(k, ps)| PositionBias { k, prompts: ps.len(), mean_prob: mean_vec(ps.into_iter()) }).collect()
}

/// How much an item's scale-normalised expected score moves across option orders alone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OrderSpread {
    /// Items (question, country, template) asked in at least two orders.
    pub items: usize,
    pub orders_per_item: f64,
    /// Mean over items of max - min of the normalised expected score (0-1 scale).
    pub mean_range: f64,
    /// Mean over items of the standard deviation of the normalised expected score.
    pub mean_sd: f64,
    /// Share of items whose most likely option is not the same in every order.
    pub top_option_changes: f64,
}

pub fn order_spread(samples: &[Sample], survey: &Survey) -> Option<OrderSpread> {
    let groups = group_by(samples.iter(), |s| format!("{}\u{1f}{}\u{1f}{}", s.question_id, s.country, s.template));
    let (mut ranges, mut sds, mut counts, mut changes) = (vec![], vec![], vec![], 0usize);
    for g in groups.iter().filter(|g| g.len() >= 2) {
        let Ok(q) = survey.question(&g[0].question_id) else { continue };
        let xs: Vec<f64> = g.iter().filter_map(|s| s.expected_score.and_then(|e| q.normalise(e))).collect();
        if xs.len() < 2 {
            continue;
        }
        let m = mean(&xs).unwrap_or(0.0);
        let hi = xs.iter().cloned().fold(f64::MIN, f64::max);
        let lo = xs.iter().cloned().fold(f64::MAX, f64::min);
        ranges.push(hi - lo);
        sds.push((xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64).sqrt());
        counts.push(g.len() as f64);
        let argmax = |p: &[f64]| p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0);
        let top = argmax(&g[0].probs);
        if g.iter().any(|s| argmax(&s.probs) != top) {
            changes += 1;
        }
    }
    (!ranges.is_empty()).then(|| OrderSpread {
        items: ranges.len(),
        orders_per_item: mean(&counts).unwrap_or(0.0),
        mean_range: mean(&ranges).unwrap_or(0.0),
        mean_sd: mean(&sds).unwrap_or(0.0),
        top_option_changes: changes as f64 / ranges.len() as f64,
    })
}
