//! LoRA fine-tuning of a student on a synthetic dataset: seeded data order and dropout, AdamW with
//! warmup and decay, gradient accumulation and clipping, validation loss, atomic checkpoints in
//! PEFT format, and exact resume (the step number determines every random choice, so a resumed
//! run replays the uninterrupted one). Steps are random records or whole questions (all their
//! countries), the objective KL/LM plus an optional country-deviation term.
pub mod examples;
pub mod loss;
pub mod optim;
pub mod validate;

use crate::generate::dataset::{self, Lesson, Record};
use crate::model::adapter::{self, Adapter};
use crate::model::mode::Mode;
use crate::model::Model;
use crate::recipe::{DistillRecipe, Objective, TrainSection};
use crate::util::error::{Error, Result};
use crate::util::io::{sha256_hex, write_json, JsonlLog};
use candle_core::Tensor;
use examples::{Built, Example};
use optim::AdamW;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

pub const CHECKPOINT: &str = "checkpoint";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "trainer_state.json";
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
fn question_groups(data: &std::path::Path, exs: &[Example], by_wording: bool) -> Result<Vec<Vec<usize>>> {
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

fn denominators(exs: &[&Example]) -> (f64, f64) {
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
/// [`TrainSection::deviation`]); returns the loss (KL plus the weighted term), the term's value
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
fn by_length<'a>(exs: &[&'a Example]) -> Vec<&'a Example> {
    let mut v = exs.to_vec();
    v.sort_by_key(|e| std::cmp::Reverse(e.rows.iter().map(|r| r.len()).max().unwrap_or(0)));
    v
}

/// Mean loss over `exs` without gradients (the probe's numerics).
pub fn eval_loss(model: &Model, exs: &[&Example], micro: usize) -> Result<f64> {
    Ok(validate::validate(model, exs, micro)?.loss)
}

/// If a checkpoint swap was interrupted between its two renames, put the previous one back.
fn recover(out: &Path) -> Result<()> {
    for name in [CHECKPOINT, BEST] {
        let (cur, old) = (out.join(name), out.join(format!("{name}.old")));
        if !cur.exists() && old.exists() {
            std::fs::rename(&old, &cur).map_err(|e| Error::io(&old, e))?;
        }
    }
    Ok(())
}

fn save_checkpoint(out: &Path, adapter: &Adapter, model: &Model, opt: &AdamW, state: &TrainerState) -> Result<()> {
    let tmp = out.join(format!("{CHECKPOINT}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    adapter.save(&tmp, model)?;
    let mut tensors = Vec::new();
    for (i, name) in adapter.state_keys().iter().enumerate() {
        tensors.push((format!("{name}.exp_avg"), opt.m[i].clone()));
        tensors.push((format!("{name}.exp_avg_sq"), opt.v[i].clone()));
    }
    let bytes = adapter::save_safetensors(&tensors, HashMap::new())?;
    crate::util::io::atomic_write(&tmp.join(OPTIMIZER_FILE), &bytes)?;
    write_json(&tmp.join(STATE_FILE), state)?;
    swap_in(out, CHECKPOINT)?;
    // The newest adapter also sits at the top of OUT, so `--adapter OUT` and PEFT load it.
    copy_adapter(&out.join(CHECKPOINT), out)
}

/// Replaces folder `out/name` by `out/name.tmp`: the old one is moved aside first and removed
/// last, so a crash leaves one of them (put back by [`recover`]).
fn swap_in(out: &Path, name: &str) -> Result<()> {
    let (tmp, cur, old) = (out.join(format!("{name}.tmp")), out.join(name), out.join(format!("{name}.old")));
    if cur.exists() {
        std::fs::rename(&cur, &old).map_err(|e| Error::io(&cur, e))?;
    }
    std::fs::rename(&tmp, &cur).map_err(|e| Error::io(&tmp, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// The adapter files of folder `from` written atomically into `to`.
fn copy_adapter(from: &Path, to: &Path) -> Result<()> {
    for f in [adapter::CONFIG_FILE, adapter::WEIGHTS_FILE, adapter::MORES_FILE] {
        let bytes = crate::util::io::read_input(&from.join(f), crate::util::io::Cap::Weights)?;
        crate::util::io::atomic_write(&to.join(f), &bytes)?;
    }
    Ok(())
}

/// Folder of the best validated adapter (`train.patience`).
pub const BEST: &str = "best";

/// The adapter as the best validated so far: written beside, then swapped in.
fn save_best(out: &Path, adapter: &Adapter, model: &Model) -> Result<()> {
    let tmp = out.join(format!("{BEST}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    adapter.save(&tmp, model)?;
    swap_in(out, BEST)
}

/// At the end of an early-stopped (or patience-watched) run, the best validated adapter goes to
/// the top of OUT, where `--adapter OUT` and the transfer probe read it; the checkpoint keeps
/// the last step's for resuming.
fn keep_best(out: &Path) -> Result<()> {
    let best = out.join(BEST);
    if !best.exists() {
        return Ok(());
    }
    copy_adapter(&best, out)
}

fn load_optimizer(dir: &Path, adapter: &Adapter, opt: &mut AdamW, model: &Model) -> Result<()> {
    let p = dir.join(OPTIMIZER_FILE);
    let bytes = crate::util::io::read_input(&p, crate::util::io::Cap::Weights)?;
    let (tensors, _) = adapter::read_safetensors(&bytes, &model.device).map_err(|m| Error::model(&p, m))?;
    let t: HashMap<String, Tensor> = tensors.into_iter().collect();
    for (i, name) in adapter.state_keys().iter().enumerate() {
        let get = |suffix: &str| {
            t.get(&format!("{name}.{suffix}"))
                .cloned()
                .ok_or_else(|| Error::model(&p, format!("missing {name}.{suffix}")))
        };
        opt.m[i] = get("exp_avg")?;
        opt.v[i] = get("exp_avg_sq")?;
    }
    Ok(())
}

fn read_log(path: &Path) -> Result<Vec<LogLine>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    crate::util::io::read_jsonl(path)
}

pub fn plot_loss(out: &Path) -> Result<()> {
    let log = read_log(&out.join(LOSS_FILE))?;
    let train = crate::report::svg::Series {
        name: "train loss".into(),
        points: log.iter().map(|l| ((l.step + 1) as f64, l.loss)).collect(),
    };
    let val = crate::report::svg::Series {
        name: "validation loss".into(),
        points: log.iter().filter_map(|l| l.val_loss.map(|v| ((l.step + 1) as f64, v))).collect(),
    };
    crate::report::svg::lines(&out.join("loss.svg"), "LoRA training loss", "optimizer step", "loss", &[train, val])
}

/// A finished or running job's checkpoint is continued only on request and never overwritten by
/// a fresh run; checked before any work.
fn check_out(a: &TrainArgs) -> Result<PathBuf> {
    recover(&a.out)?;
    let ckpt = a.out.join(CHECKPOINT);
    if ckpt.exists() && !a.resume {
        return Err(Error::Invalid(format!(
            "{} already holds a checkpoint: pass --resume to continue it, or choose another --out",
            a.out.display()
        )));
    }
    if a.resume && !ckpt.exists() {
        return Err(Error::Invalid(format!("--resume: no checkpoint in {}", a.out.display())));
    }
    Ok(ckpt)
}

/// Every record's target must suit the recipe's objective.
fn check_objective(a: &TrainArgs, t: &TrainSection, data: &[(Record, Lesson)]) -> Result<()> {
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

/// Training and validation examples (a seeded split by record id) and how many were too long.
fn build_examples(
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

/// The adapter and trainer state: a fresh adapter, or the checkpoint's after checking it was
/// trained on the same data, recipe and student.
fn start_or_resume(
    a: &TrainArgs,
    recipe: &DistillRecipe,
    model: &mut Model,
    ckpt: &Path,
    fresh: TrainerState,
) -> Result<(Adapter, TrainerState)> {
    if !a.resume {
        return Ok((Adapter::attach_new(model, &recipe.lora, recipe.train.seed)?, fresh));
    }
    let state: TrainerState = crate::util::io::read_json(&ckpt.join(STATE_FILE))?;
    let mismatch = [
        (state.data_sha256 != fresh.data_sha256, "data file"),
        (state.recipe_sha256 != fresh.recipe_sha256, "recipe"),
        (state.base_sha256 != model.info.sha256, "student model"),
    ];
    if let Some((_, what)) = mismatch.iter().find(|m| m.0) {
        return Err(Error::Invalid(format!(
            "--resume: the {what} differs from the one {} was trained with; resume with the same inputs or start a new --out",
            a.out.display()
        )));
    }
    Ok((Adapter::load(model, ckpt)?, state))
}

pub fn train(a: &TrainArgs) -> Result<Summary> {
    let mut recipe = DistillRecipe::load_with(&a.recipe, &a.sets)?;
    if let Some(m) = &a.model {
        recipe.student.path = Some(m.clone());
    }
    if let Some(s) = a.max_steps {
        recipe.train.max_steps = Some(s);
    }
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

    let mut model = Model::load(&model_path, &crate::model::LoadOptions::for_weights(recipe.student.weights))?;
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

/// The optimizer loop's fixed inputs.
struct Run<'a> {
    a: &'a TrainArgs,
    t: &'a TrainSection,
    dropout: f64,
    model: &'a Model,
    adapter: &'a Adapter,
    opt: &'a mut AdamW,
    log: &'a mut JsonlLog,
    /// Steps of whole questions (`train.group = "question"`): the examples of each.
    groups: Option<&'a [Vec<usize>]>,
}

impl Run<'_> {
    /// Steps from the state's step to the end (or `--stop-after`); returns the first and last
    /// training loss and the last validation loss.
    fn steps(
        &mut self,
        state: &mut TrainerState,
        train_ex: &[Example],
        val_ex: &[Example],
    ) -> Result<(Option<f64>, Option<f64>, Option<f64>)> {
        let (a, t) = (self.a, self.t);
        let total = state.total_steps;
        let bar = crate::util::progress::bar(total.saturating_sub(state.step) as u64, "train", a.progress);
        let val_refs: Vec<&Example> = val_ex.iter().collect();
        let (mut first, mut last, mut last_val) = (None, None, None);
        let t0 = std::time::Instant::now();
        let mut tokens_run = 0u64;
        let end = if state.early.stopped {
            state.step
        } else {
            a.stop_after.map(|n| (state.step + n).min(total)).unwrap_or(total)
        };
        for step in state.step..end {
            let idx = match self.groups {
                Some(g) => group_step_indices(g, t.questions_per_step, t.seed, step),
                None => step_indices(train_ex.len(), t.batch * t.grad_accum, t.seed, step),
            };
            let exs: Vec<&Example> = idx.iter().map(|&i| &train_ex[i]).collect();
            let dropout_seed = (self.dropout > 0.0).then(|| t.seed ^ (step as u64 + 1).wrapping_mul(0x9E37_79B9));
            let (loss, deviation, mut grads) =
                step_grads_with(self.model, self.adapter, &exs, t.batch, dropout_seed, t.deviation)?;
            let grad_norm = optim::clip(&mut grads, t.clip)?;
            let lr = optim::lr_at(t.lr, t.schedule, t.warmup_steps, step, total);
            self.opt.step(&grads, lr)?;
            let tokens: u64 = exs.iter().map(|e| e.n_tokens() as u64).sum();
            state.tokens_seen += tokens;
            tokens_run += tokens;
            state.step = step + 1;
            let done = state.step == total;
            let pausing = state.step == end;
            let val = if !val_refs.is_empty() && (state.step.is_multiple_of(t.eval_every.max(1)) || done) {
                Some(validate::validate(self.model, &val_refs, t.batch)?)
            } else {
                None
            };
            let val_loss = val.map(|v| v.loss);
            let mut stopping = false;
            if let (Some(score), true) = (val.and_then(|v| v.score(t.select)), t.patience > 0) {
                if state.early.observe(state.step, score) {
                    save_best(&a.out, self.adapter, self.model)?;
                }
                stopping = !done && state.early.exhausted(t.patience);
                state.early.stopped = stopping;
            }
            let tps = tokens_run as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            let line = LogLine {
                step,
                loss,
                lr,
                grad_norm,
                tokens: state.tokens_seen,
                tokens_per_s: tps,
                val_loss,
                deviation,
                val_country_r: val.and_then(|v| v.country_r),
            };
            self.log.append(std::slice::from_ref(&line))?;
            first.get_or_insert(loss);
            last = Some(loss);
            if val_loss.is_some() {
                last_val = val_loss;
            }
            if state.step.is_multiple_of(t.save_every.max(1)) || done || pausing || stopping {
                save_checkpoint(&a.out, self.adapter, self.model, self.opt, state)?;
            }
            bar.set_message(format!("train loss {loss:.4} {tps:.0} tok/s"));
            bar.inc(1);
            if stopping {
                break;
            }
        }
        bar.finish_and_clear();
        Ok((first, last, last_val))
    }
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
