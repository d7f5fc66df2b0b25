//! Before the first step: every record checked against the objective, built into an example (the
//! probe's prompt) and put in the training or the validation split.
use super::examples::{self, Built, Example};
use super::validate;
use super::TrainArgs;
use crate::generate::dataset::{Lesson, Record};
use crate::model::Model;
use crate::recipe::{DistillRecipe, Objective, TrainSection};
use crate::util::error::{Error, Result};
use std::collections::BTreeSet;

/// Every record's target must suit the recipe's objective.
pub(super) fn check_objective(a: &TrainArgs, t: &TrainSection, data: &[(Record, Lesson)]) -> Result<()> {
    for (r, lesson) in data {
        let bad = match (t.objective, lesson) {
            (Objective::Lm, Lesson::Labels { .. }) => Some("a distribution target, but train.objective = \"lm\""),
            (Objective::Kl, Lesson::Text { .. }) => Some("a text target, but train.objective = \"kl\""),
            _ => None,
        };
        if let Some(why) = bad {
            return Err(Error::Invalid(format!("{}: record {:?} has {why}", a.data.display(), r.id)));
        }
    }
    Ok(())
}

/// How the validation split groups records; families come from the recipe's survey.
fn val_keys(recipe: &DistillRecipe) -> Result<validate::ValKeys> {
    match (recipe.train.val_split, &recipe.generate) {
        (crate::recipe::ValSplit::Family, Some(g)) => {
            validate::ValKeys::families(&g.data, g.leak_ngram, g.leak_threshold)
        }
        // The recipe's validation rules this out; kept so the match stands on its own.
        (crate::recipe::ValSplit::Family, None) => {
            Err(Error::Invalid("train.val_split = \"family\" needs a [generate] section".into()))
        }
        (split, _) => Ok(validate::ValKeys::new(split)),
    }
}

/// The source questions the trainer takes gradients on: every question of `records` with at
/// least one record outside the validation split. A question or family split holds whole
/// questions out, so its validation questions are not among them; a record split holds out
/// single records and leaves every question in. Errors as the split itself would.
pub fn trained_questions(recipe: &DistillRecipe, records: &[Record]) -> Result<BTreeSet<String>> {
    let keys = val_keys(recipe)?;
    let t = &recipe.train;
    let mut out = BTreeSet::new();
    for r in records {
        if let Some(q) = &r.question_id {
            if !out.contains(q) && !keys.held_out(t.seed, r, t.val_fraction)? {
                out.insert(q.clone());
            }
        }
    }
    Ok(out)
}

/// Training and validation examples (a seeded split by record id) and how many were too long.
pub(super) fn build_examples(
    a: &TrainArgs,
    recipe: &DistillRecipe,
    model: &Model,
    data: &[(Record, Lesson)],
) -> Result<(Vec<Example>, Vec<Example>, usize)> {
    let t = &recipe.train;
    // The probe's chat setting: training contexts are rendered exactly as the probe's prompts.
    let chat = crate::prompt::use_chat(&recipe.prompt, model);
    let keys = val_keys(recipe)?;
    let (mut train_ex, mut val_ex, mut too_long) = (Vec::new(), Vec::new(), 0);
    for (r, lesson) in data {
        match examples::build(model, r, lesson, chat, t.max_len)? {
            Built::Ok(ex) if keys.held_out(t.seed, r, t.val_fraction)? => val_ex.push(ex),
            Built::Ok(ex) => train_ex.push(ex),
            Built::TooLong => too_long += 1,
        }
    }
    if t.val_split != crate::recipe::ValSplit::Record && !val_ex.is_empty() {
        fn questions(exs: &[Example]) -> BTreeSet<&str> {
            exs.iter().filter_map(|x| x.question.as_deref()).collect()
        }
        let v: Vec<&str> = questions(&val_ex).into_iter().collect();
        let all = questions(&train_ex).len() + v.len();
        eprintln!("validation holds {} of {all} source questions: {}", v.len(), v.join(","));
    }
    if too_long > 0 {
        eprintln!("warning: skipped {too_long} records whose prompt is longer than train.max_len = {}", t.max_len);
    }
    if train_ex.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no training examples left after the validation split and length limit",
            a.data.display()
        )));
    }
    if t.patience > 0 && val_ex.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: train.patience needs validation examples, but train.val_fraction = {} held out none; raise it",
            a.data.display(),
            t.val_fraction
        )));
    }
    if t.patience > 0 && t.select == crate::recipe::Select::CountryR && !validate::has_country_pairs(&val_ex) {
        return Err(Error::Invalid(format!(
            "{}: train.select = \"country_r\" needs a validation question in at least 3 countries (survey-grounded or soft-label records); set train.val_split = \"question\" or select = \"loss\"",
            a.data.display()
        )));
    }
    Ok((train_ex, val_ex, too_long))
}
