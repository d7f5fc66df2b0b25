//! LoRA fine-tuning of a student on a synthetic dataset: seeded data order and dropout, AdamW with
//! warmup and decay, gradient accumulation and clipping, validation loss, atomic checkpoints in
//! PEFT format, and exact resume (the step number determines every random choice, so a resumed
//! run replays the uninterrupted one). Steps are random records or whole questions (all their
//! countries), the objective KL/LM plus an optional country-deviation term.
mod checkpoint;
pub mod examples;
pub mod loss;
pub mod optim;
mod run;
mod setup;
mod step;
pub mod validate;

pub use checkpoint::BEST;
pub use run::plot_loss;
pub use setup::trained_questions;
pub use step::{deviation_term, group_step_indices, step_grads, step_grads_with, step_indices};

use crate::generate::dataset;
use crate::model::Model;
use crate::recipe::DistillRecipe;
use crate::util::error::{Error, Result};
use crate::util::io::{sha256_hex, write_json, JsonlLog};
use checkpoint::{check_out, keep_best, load_optimizer, save_checkpoint, start_or_resume};
use examples::Example;
use optim::AdamW;
use run::{read_log, Run};
use serde::{Deserialize, Serialize};
use setup::{build_examples, check_objective};
use std::path::PathBuf;
use step::question_groups;

pub const CHECKPOINT: &str = "checkpoint";
pub const LOSS_FILE: &str = "loss.jsonl";
/// Default memory for the frozen lower layers' output per row when `lora.layers` leaves them
/// frozen (`[train] frozen_rows_mib`; SmolLM2: 2.3 KB per token, so about 4,000 rows of 110 tokens).
pub const FROZEN_ROWS_MIB: usize = 1024;

pub struct TrainArgs {
    pub recipe: PathBuf,
    pub data: PathBuf,
    pub out: PathBuf,
    pub resume: bool,
    pub model: Option<PathBuf>,
    pub max_steps: Option<usize>,
    /// Checkpoint and stop after this many steps in this invocation (the schedule still spans
    /// the whole run; continue with `--resume`).
    pub stop_after: Option<usize>,
    pub threads: usize,
    pub progress: bool,
    /// `--set section.key=value` recipe overrides.
    pub sets: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: usize,
    pub total_steps: usize,
    pub seed: u64,
    pub data_sha256: String,
    pub recipe_sha256: String,
    pub base_sha256: String,
    pub tokens_seen: u64,
    pub n_train: usize,
    pub n_val: usize,
    /// Early stopping (`train.patience`): the best validation so far and whether training stopped.
    #[serde(default, skip_serializing_if = "is_fresh")]
    pub early: validate::EarlyStop,
}

fn is_fresh(e: &validate::EarlyStop) -> bool {
    *e == validate::EarlyStop::default()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogLine {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: u64,
    pub tokens_per_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// The country-deviation term's value (unweighted), when the recipe uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deviation: Option<f64>,
    /// Validation cross-country r (see [`validate::country_r`]), when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_country_r: Option<f64>,
}

pub struct Summary {
    pub steps: usize,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub val_loss: Option<f64>,
    pub skipped_too_long: usize,
    /// With `train.patience`: the step count whose adapter was kept, and whether training
    /// stopped before its last step.
    pub best_step: Option<usize>,
    pub stopped_early: bool,
}

/// The train/validation split: a record is held out when a seeded hash of its id falls below
/// `val_fraction`, so the split does not depend on file order.
pub fn is_val(seed: u64, id: &str, val_fraction: f64) -> bool {
    let x = crate::util::seed::from_text(&format!("{seed}:{id}")) as f64 / u64::MAX as f64;
    x < val_fraction
}

/// Mean loss over `exs` without gradients (the probe's numerics).
pub fn eval_loss(model: &Model, exs: &[&Example], micro: usize) -> Result<f64> {
    Ok(validate::validate(model, exs, micro)?.loss)
}

/// The recipe with `--set` and the command line's overrides (`--model`, `--max-steps`) applied.
pub fn resolve_recipe(a: &TrainArgs) -> Result<DistillRecipe> {
    let mut recipe = DistillRecipe::load_with(&a.recipe, &a.sets)?;
    if let Some(m) = &a.model {
        recipe.student.path = Some(m.clone());
    }
    if let Some(s) = a.max_steps {
        recipe.train.max_steps = Some(s);
    }
    Ok(recipe)
}

pub fn train(a: &TrainArgs) -> Result<Summary> {
    let recipe = resolve_recipe(a)?;
    let t = recipe.train.clone();
    let model_path = recipe.student.path.clone().ok_or_else(|| Error::Recipe {
        path: a.recipe.clone(),
        msg: "no student model: set [student] path or pass --model".into(),
    })?;
    // Before any work: a second process on the same --out stops at once.
    let _writer = crate::util::lock::OutputLock::dir(&a.out)?;
    let ckpt = check_out(a)?;
    let data = dataset::read(&a.data)?;
    check_objective(a, &t, &data)?;
    let data_sha256 = crate::util::io::sha256_file(&a.data)?;
    let recipe_json = serde_json::to_value(&recipe)?;
    let recipe_sha256 = sha256_hex(serde_json::to_string(&recipe_json)?.as_bytes());

    let mut model = Model::load(&model_path, &crate::model::LoadOptions::for_section(&recipe.student)?)?;
    let (train_ex, val_ex, too_long) = build_examples(a, &recipe, &model, &data)?;
    let groups = match t.group {
        crate::recipe::Group::Question => Some(question_groups(&a.data, &train_ex, false)?),
        crate::recipe::Group::Wording => Some(question_groups(&a.data, &train_ex, true)?),
        crate::recipe::Group::None => None,
    };
    let (units, per_step) = match &groups {
        Some(g) => (g.len(), t.questions_per_step),
        None => (train_ex.len(), t.batch * t.grad_accum),
    };
    let total = t.max_steps.unwrap_or(t.epochs * units.div_ceil(per_step));
    let fresh = TrainerState {
        step: 0,
        total_steps: total,
        seed: t.seed,
        data_sha256,
        recipe_sha256,
        base_sha256: model.info.sha256.clone(),
        tokens_seen: 0,
        n_train: train_ex.len(),
        n_val: val_ex.len(),
        early: Default::default(),
    };
    let (adapter, mut state) = start_or_resume(a, &recipe, &mut model, &ckpt, fresh)?;
    if recipe.lora.layers.is_some() {
        model.frozen_rows = Some(std::sync::Mutex::new(crate::model::frozen::FrozenRows::new(
            t.frozen_rows_mib.unwrap_or(FROZEN_ROWS_MIB),
        )));
    }
    state.total_steps = total;
    let mut opt = AdamW::new(adapter.vars(), t.betas, t.eps, t.weight_decay)?;
    if a.resume {
        load_optimizer(&ckpt, &adapter, &mut opt, &model)?;
        opt.step = state.step;
    }
    let log_path = a.out.join(LOSS_FILE);
    // The curve up to the checkpoint; steps logged after it are replayed.
    let kept: Vec<LogLine> = read_log(&log_path)?.into_iter().filter(|l| a.resume && l.step < state.step).collect();
    let mut log = JsonlLog::create(&log_path, &kept)?;
    write_manifest(a, &recipe, &model)?;
    eprintln!(
        "training {} LoRA parameters ({} tensors) on {} examples ({} validation), {} steps of {} {}",
        adapter.vars().iter().map(|v| v.elem_count()).sum::<usize>(),
        adapter.vars().len(),
        train_ex.len(),
        val_ex.len(),
        total,
        per_step,
        match t.group {
            crate::recipe::Group::Question => "questions (all their countries)",
            crate::recipe::Group::Wording => "question wordings (all their countries)",
            crate::recipe::Group::None => "examples",
        }
    );
    let mut run = Run {
        a,
        t: &t,
        dropout: recipe.lora.dropout,
        model: &model,
        adapter: &adapter,
        opt: &mut opt,
        log: &mut log,
        groups: groups.as_deref(),
    };
    let (first, last, last_val) = run.steps(&mut state, &train_ex, &val_ex)?;
    if let Some(Ok(f)) = model.frozen_rows.as_ref().map(|f| f.lock()) {
        eprintln!("{}", f.summary());
    }
    let finished = state.step == total || state.early.stopped;
    if finished && total > 0 && !ckpt.exists() {
        save_checkpoint(&a.out, &adapter, &model, &opt, &state)?;
    }
    if t.patience > 0 && finished {
        keep_best(&a.out)?;
        eprintln!(
            "kept the adapter after step {} of {} (best validation {} {:.4}){}",
            state.early.best_step.unwrap_or(0),
            state.step,
            match t.select {
                crate::recipe::Select::Loss => "loss",
                crate::recipe::Select::CountryR => "cross-country r",
            },
            state.early.best.map(|b| if t.select == crate::recipe::Select::Loss { -b } else { b }).unwrap_or(f64::NAN),
            if state.early.stopped { format!("; stopped early, {} steps planned", total) } else { String::new() }
        );
    }
    plot_loss(&a.out)?;
    Ok(Summary {
        steps: state.step,
        first_loss: first,
        last_loss: last,
        val_loss: last_val,
        skipped_too_long: too_long,
        best_step: state.early.best_step,
        stopped_early: state.early.stopped,
    })
}

fn write_manifest(a: &TrainArgs, recipe: &DistillRecipe, model: &Model) -> Result<()> {
    let (git_commit, git_dirty) = crate::util::manifest::git();
    let recipe_json = serde_json::to_value(recipe)?;
    let m = crate::util::manifest::Manifest {
        command: std::env::args().collect(),
        mores_version: env!("CARGO_PKG_VERSION").into(),
        crates: crate::util::manifest::crate_versions(),
        git_commit,
        git_dirty,
        recipe_sha256: sha256_hex(serde_json::to_string(&recipe_json)?.as_bytes()),
        recipe: recipe_json,
        model: model.info.clone(),
        inputs: crate::util::manifest::hash_inputs(&[&a.data])?,
        seed: recipe.train.seed,
        threads: a.threads,
        batch: recipe.train.batch,
        shard: None,
        device: "cpu".into(),
        dtype: "f32".into(),
        started: crate::util::manifest::now_utc(),
    };
    write_json(&a.out.join("manifest.json"), &m)
}
