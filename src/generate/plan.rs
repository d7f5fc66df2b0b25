//! What a generation would do, without a model and without writing anything (`--dry-run`).
use super::{work_items, GenerateArgs};
use crate::generate::leak::Split;
use crate::recipe::generate::{GenMode, GenerateSection};
use crate::recipe::DistillRecipe;
use crate::survey::Survey;
use crate::util::error::{Error, Result};
use std::collections::BTreeSet;

/// The work of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratePlan {
    /// Work items: one record each when the teacher's output is kept.
    pub items: usize,
    pub countries: usize,
    /// Distinct survey questions the items come from (0 for `qa`).
    pub questions: usize,
    /// Texts the teacher writes: a paraphrase per (question, wording) in the paraphrase modes
    /// (the survey's own wording needs none), one answer per item in `qa`.
    pub generations: usize,
    /// Persona prompts the teacher scores (soft labels only).
    pub teacher_scores: usize,
    pub max_new_tokens: usize,
}

/// Counts for a [generate] section on a split (the one on disk if `split` is given, else drawn
/// in memory as generation would draw it).
pub fn count(g: &GenerateSection, survey: &Survey, split: &Split) -> Result<GeneratePlan> {
    let items = work_items(g, survey, split)?;
    let countries: BTreeSet<&str> = items.iter().map(|i| i.country.as_str()).collect();
    let questions: BTreeSet<&str> = items.iter().filter_map(|i| i.question_id.as_deref()).collect();
    let wordings: BTreeSet<(&str, usize)> =
        items.iter().filter_map(|i| Some((i.question_id.as_deref()?, i.variant))).collect();
    let (generations, teacher_scores) = match g.mode {
        GenMode::Qa => (items.len(), 0),
        mode => {
            let written =
                if !g.paraphrase { 0 } else { wordings.iter().filter(|(_, v)| !(g.original && *v == 0)).count() };
            (written, if mode == GenMode::SoftLabels { items.len() } else { 0 })
        }
    };
    Ok(GeneratePlan {
        items: items.len(),
        countries: countries.len(),
        questions: questions.len(),
        generations,
        teacher_scores,
        max_new_tokens: g.sampling.max_new_tokens,
    })
}

/// The resolved recipe and the plan of `mores generate` with these arguments.
pub fn plan(a: &GenerateArgs) -> Result<(DistillRecipe, GeneratePlan)> {
    let recipe = DistillRecipe::load_with(&a.recipe, &a.sets)?;
    let mut g = recipe
        .generate
        .clone()
        .ok_or_else(|| Error::Recipe { path: a.recipe.clone(), msg: "no [generate] section".into() })?;
    if let Some(c) = &a.countries {
        g.countries = c.clone();
    }
    let survey = Survey::load(&g.data)?;
    let (_, _, _, split_path) = super::paths(&a.out, a.shard);
    let split = if split_path.exists() {
        Split::load(&split_path)?
    } else {
        Split::draw(&survey, g.seed, g.heldout_fraction, g.leak_ngram, g.leak_threshold)?
    };
    let mut p = count(&g, &survey, &split)?;
    if let Some(s) = a.shard {
        // Every N-th item, as the shard takes them.
        p.items = (p.items + s.count - 1 - s.index) / s.count;
    }
    Ok((recipe, p))
}
