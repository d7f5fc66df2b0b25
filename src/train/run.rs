//! The optimizer loop: each step's examples, gradients, clipping, learning rate and update, the
//! validation and early stopping it schedules, checkpoints as it goes, and the loss log and its
//! plot.
use super::checkpoint::{save_best, save_checkpoint};
use super::examples::Example;
use super::optim::{self, AdamW};
use super::step::{group_step_indices, step_grads_with, step_indices};
use super::validate;
use super::{LogLine, TrainArgs, TrainerState, LOSS_FILE};
use crate::model::adapter::Adapter;
use crate::model::Model;
use crate::recipe::TrainSection;
use crate::util::error::Result;
use crate::util::io::JsonlLog;
use std::path::Path;

/// The optimizer loop's fixed inputs.
pub(super) struct Run<'a> {
    pub(super) a: &'a TrainArgs,
    pub(super) t: &'a TrainSection,
    pub(super) dropout: f64,
    pub(super) model: &'a Model,
    pub(super) adapter: &'a Adapter,
    pub(super) opt: &'a mut AdamW,
    pub(super) log: &'a mut JsonlLog,
    /// Steps of whole questions (`train.group = "question"`): the examples of each.
    pub(super) groups: Option<&'a [Vec<usize>]>,
}

impl Run<'_> {
    /// Steps from the state's step to the end (or `--stop-after`); returns the first and last
    /// training loss and the last validation loss.
    pub(super) fn steps(
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

pub(super) fn read_log(path: &Path) -> Result<Vec<LogLine>> {
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
