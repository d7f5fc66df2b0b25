//! What `mores run` would do, without a model and without writing anything (`--dry-run`).
use super::{Plan, RunArgs};
use crate::generate::plan::GeneratePlan;
use crate::recipe::{DistillRecipe, ModelSection};
use crate::util::error::Result;
use std::path::PathBuf;

/// The work of each stage of a transfer run.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub recipe: DistillRecipe,
    pub out: PathBuf,
    pub countries: usize,
    pub heldout_questions: usize,
    pub train_questions_probed: usize,
    /// Prompts of one student probe (before, and again after training).
    pub probe_prompts: usize,
    /// Prompts of the teacher's probe (0 without `teacher_reference`).
    pub teacher_prompts: usize,
    pub generate: GeneratePlan,
    /// (question, wording) groups the dataset will have at most: the units of a step with
    /// `[train] group = "wording"`.
    pub wordings: usize,
    /// Teacher served (its time is the server's).
    pub teacher_served: bool,
}

pub fn plan(a: &RunArgs) -> Result<RunPlan> {
    let p = Plan::new(a)?;
    let student = p.probe_recipe(&p.recipe.student);
    let probe_prompts = crate::probe::variants(&student, &p.survey)?.len();
    let teacher_prompts = if p.t.teacher_reference {
        let tp = p.probe_recipe(&ModelSection { weights: crate::recipe::WeightMode::F32, ..p.teacher_sec.clone() });
        crate::probe::variants(&tp, &p.survey)?.len()
    } else {
        0
    };
    let mut g = p.g.clone();
    g.countries = p.countries.clone();
    let generate = crate::generate::plan::count(&g, &p.survey, &p.split)?;
    let wordings = generate.questions * g.paraphrases.max(1);
    Ok(RunPlan {
        out: p.out.clone(),
        countries: p.countries.len(),
        heldout_questions: p.heldout.len(),
        train_questions_probed: p.train_probe.len(),
        probe_prompts,
        teacher_prompts,
        generate,
        wordings,
        teacher_served: p.teacher.is_none(),
        recipe: p.recipe,
    })
}
