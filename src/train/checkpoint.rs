//! Checkpoints in OUT: the adapter, the optimizer's moments and the trainer state written beside
//! the previous checkpoint and swapped in, so a crash leaves one whole checkpoint; the best
//! validated adapter kept apart (`train.patience`); and the checks that continue a checkpoint only
//! on request and only with the inputs it was trained on.
use super::optim::AdamW;
use super::{TrainArgs, TrainerState, CHECKPOINT};
use crate::model::adapter::{self, Adapter};
use crate::model::Model;
use crate::recipe::DistillRecipe;
use crate::util::error::{Error, Result};
use crate::util::io::write_json;
use candle_core::Tensor;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const STATE_FILE: &str = "trainer_state.json";

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

pub(super) fn save_checkpoint(
    out: &Path,
    adapter: &Adapter,
    model: &Model,
    opt: &AdamW,
    state: &TrainerState,
) -> Result<()> {
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
pub(super) fn save_best(out: &Path, adapter: &Adapter, model: &Model) -> Result<()> {
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
pub(super) fn keep_best(out: &Path) -> Result<()> {
    let best = out.join(BEST);
    if !best.exists() {
        return Ok(());
    }
    copy_adapter(&best, out)
}

pub(super) fn load_optimizer(dir: &Path, adapter: &Adapter, opt: &mut AdamW, model: &Model) -> Result<()> {
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

/// A finished or running job's checkpoint is continued only on request and never overwritten by
/// a fresh run; checked before any work.
pub(super) fn check_out(a: &TrainArgs) -> Result<PathBuf> {
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

/// The adapter and trainer state: a fresh adapter, or the checkpoint's after checking it was
/// trained on the same data, recipe and student.
pub(super) fn start_or_resume(
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
