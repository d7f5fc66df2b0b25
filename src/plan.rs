//! `--dry-run` of probe, generate, train and run: the resolved recipe (includes merged, `--set`
//! overrides applied), the work each stage would do and an estimate of its time. Nothing is
//! loaded beyond the recipe, the survey tables and a dataset's lines, and nothing is written.
//!
//! The estimates come from rates measured on 2 CPU cores with the default models (SmolLM2-135M
//! student in f32, Gemma-3-270M teacher in q8; docs/experiments.md and docs/benchmarks.md),
//! scaled by the thread count; a larger model takes longer about in proportion to its size, and a
//! served model as long as its server takes.
use crate::evaluate::ProbeArgs;
use crate::generate::plan::GeneratePlan;
use crate::generate::GenerateArgs;
use crate::recipe::{DistillRecipe, Group, TrainSection, ValSplit};
use crate::train::TrainArgs;
use crate::transfer::RunArgs;
use crate::util::error::Result;
use std::fmt::Write;

/// Prompts per second of an in-process probe on 2 threads (the default 11,058-prompt probe: about
/// 14 min for SmolLM2-135M, 13 min for Gemma-3-270M).
const PROBE_PROMPTS_PER_S: f64 = 13.0;
/// Seconds to load and hash a default model before a probe.
const LOAD_S: f64 = 5.0;
/// The default teacher's decoding speed on 2 threads (q8), tokens per second.
const TEACHER_TOKENS_PER_S: f64 = 60.0;
/// Training seconds per record on 2 threads: a pass through every layer, and a later pass over
/// a record whose frozen lower layers' output is kept (`[lora] layers`).
const TRAIN_ROW_S: f64 = 0.8;
const TRAIN_ROW_LATER_S: f64 = 0.2;

fn scale(seconds: f64, threads: usize) -> f64 {
    seconds * 2.0 / threads.max(1) as f64
}

fn human(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..=89 => format!("{s} s"),
        90..=5399 => format!("{} min", (s + 30) / 60),
        _ => format!("{:.1} h", s as f64 / 3600.0),
    }
}

fn resolved<T: serde::Serialize>(r: &T) -> String {
    toml::to_string_pretty(r).unwrap_or_else(|_| serde_json::to_string_pretty(r).unwrap_or_default())
}

fn probe_seconds(prompts: usize, threads: usize) -> f64 {
    LOAD_S + scale(prompts as f64 / PROBE_PROMPTS_PER_S, threads)
}

fn generate_seconds(g: &GeneratePlan, threads: usize) -> f64 {
    let tokens = g.generations * g.max_new_tokens;
    LOAD_S
        + scale(tokens as f64 / TEACHER_TOKENS_PER_S, threads)
        + scale(g.teacher_scores as f64 / PROBE_PROMPTS_PER_S, threads)
}

/// Optimizer steps and estimated seconds of training `n_train` records in `groups` (question,
/// wording) groups.
pub fn train_estimate(r: &DistillRecipe, n_train: usize, groups: usize, threads: usize) -> (usize, f64) {
    let t: &TrainSection = &r.train;
    let (units, per_step) = match t.group {
        Group::None => (n_train, t.batch * t.grad_accum),
        _ => (groups, t.questions_per_step),
    };
    let natural = t.epochs * units.div_ceil(per_step.max(1));
    let steps = t.max_steps.unwrap_or(natural);
    let epochs = if natural == 0 { 0.0 } else { t.epochs as f64 * steps as f64 / natural as f64 };
    let rows = n_train as f64;
    let seconds = if r.lora.layers.is_some() {
        rows * epochs.min(1.0) * TRAIN_ROW_S + rows * (epochs - 1.0).max(0.0) * TRAIN_ROW_LATER_S
    } else {
        rows * epochs * TRAIN_ROW_S
    };
    (steps, LOAD_S + scale(seconds, threads))
}

const NOTE: &str = "Estimates: rates measured on 2 CPU cores with SmolLM2-135M (student) and Gemma-3-270M (teacher), scaled by threads; larger models take longer about in proportion to their size.";

pub fn probe(a: &ProbeArgs) -> Result<String> {
    let (recipe, survey) = crate::evaluate::resolve_recipe(a, true)?;
    let mut prompts = crate::probe::variants(&recipe, &survey)?.len();
    if let Some(s) = a.shard {
        prompts = (prompts + s.count - 1 - s.index) / s.count;
    }
    let pairs = crate::probe::select_pairs(&recipe, &survey)?;
    let countries: std::collections::BTreeSet<&str> = pairs.iter().map(|(_, c)| c.iso3.as_str()).collect();
    let questions: std::collections::BTreeSet<&str> = pairs.iter().map(|(q, _)| q.id.as_str()).collect();
    let mut o = format!("# resolved recipe ({})\n{}\n", a.recipe.display(), resolved(&recipe));
    let served = recipe.model.endpoint.is_some();
    writeln!(
        o,
        "probe: {} (question, country) pairs ({} questions x {} countries), {prompts} prompts{}",
        pairs.len(),
        questions.len(),
        countries.len(),
        a.shard.map(|s| format!(" in shard {}/{}", s.index, s.count)).unwrap_or_default()
    )
    .ok();
    if served {
        writeln!(o, "estimated time: as long as the server takes for {prompts} prompts").ok();
    } else {
        writeln!(o, "estimated time: about {}\n{NOTE}", human(probe_seconds(prompts, a.threads))).ok();
    }
    Ok(o)
}

pub fn generate(a: &GenerateArgs, threads: usize) -> Result<String> {
    let (recipe, g) = crate::generate::plan::plan(a)?;
    let mut o = format!("# resolved recipe ({})\n{}\n", a.recipe.display(), resolved(&recipe));
    writeln!(
        o,
        "generate: {} records at most ({} countries, {} questions); the teacher writes {} texts of up to {} tokens{}",
        g.items,
        g.countries,
        g.questions,
        g.generations,
        g.max_new_tokens,
        if g.teacher_scores > 0 { format!(" and scores {} persona prompts", g.teacher_scores) } else { String::new() }
    )
    .ok();
    let served = recipe.teacher.as_ref().is_some_and(|t| t.endpoint.is_some());
    if served {
        writeln!(o, "estimated time: as long as the server takes").ok();
    } else {
        writeln!(o, "estimated time: about {}\n{NOTE}", human(generate_seconds(&g, threads))).ok();
    }
    Ok(o)
}

pub fn train(a: &TrainArgs) -> Result<String> {
    let recipe = crate::train::resolve_recipe(a)?;
    let data = crate::generate::dataset::read(&a.data)?;
    let t = &recipe.train;
    let exact_split = t.val_split == ValSplit::Record;
    let train: Vec<_> = data.iter().filter(|(r, _)| !crate::train::is_val(t.seed, &r.id, t.val_fraction)).collect();
    let n_train = if exact_split { train.len() } else { (data.len() as f64 * (1.0 - t.val_fraction)).round() as usize };
    let by_wording = t.group == Group::Wording;
    let groups: std::collections::BTreeSet<(Option<&str>, Option<&str>)> = train
        .iter()
        .map(|(r, _)| (r.question_id.as_deref(), if by_wording { r.question.as_deref() } else { None }))
        .collect();
    let (steps, secs) = train_estimate(&recipe, n_train, groups.len(), a.threads);
    let mut o = format!("# resolved recipe ({})\n{}\n", a.recipe.display(), resolved(&recipe));
    writeln!(
        o,
        "train: {} records, {}{n_train} for training; {steps} optimizer steps{}",
        data.len(),
        if exact_split { "" } else { "about " },
        match t.group {
            Group::None => format!(" of {} examples", t.batch * t.grad_accum),
            Group::Question => format!(" of {} question(s) each ({} questions)", t.questions_per_step, groups.len()),
            Group::Wording => format!(" of {} wording(s) each ({} wordings)", t.questions_per_step, groups.len()),
        }
    )
    .ok();
    writeln!(o, "estimated time: about {}\n{NOTE}", human(secs)).ok();
    Ok(o)
}

pub fn run(a: &RunArgs) -> Result<String> {
    let p = crate::transfer::dry::plan(a)?;
    let mut o = format!("# resolved recipe ({})\n{}\n", a.recipe.display(), resolved(&p.recipe));
    let th = a.threads;
    let probe_s = probe_seconds(p.probe_prompts, th);
    let teacher_s = if p.teacher_prompts > 0 && !p.teacher_served { probe_seconds(p.teacher_prompts, th) } else { 0.0 };
    let gen_s = if p.teacher_served { 0.0 } else { generate_seconds(&p.generate, th) };
    let t = &p.recipe.train;
    let n_train = (p.generate.items as f64 * (1.0 - t.val_fraction)).round() as usize;
    let (steps, train_s) = train_estimate(&p.recipe, n_train, p.wordings, th);
    writeln!(o, "run: output {}", p.out.display()).ok();
    writeln!(
        o,
        "  probe before: {} held-out and {} training questions x {} countries: {} prompts (about {})",
        p.heldout_questions,
        p.train_questions_probed,
        p.countries,
        p.probe_prompts,
        human(probe_s)
    )
    .ok();
    if p.teacher_prompts > 0 {
        let t = if p.teacher_served { "the server's time".to_string() } else { format!("about {}", human(teacher_s)) };
        writeln!(o, "  probe teacher: {} prompts ({t})", p.teacher_prompts).ok();
    }
    let gen_t = if p.teacher_served { "the server's time".to_string() } else { format!("about {}", human(gen_s)) };
    writeln!(
        o,
        "  generate: at most {} records from {} questions in {} countries; {} teacher texts ({gen_t})",
        p.generate.items, p.generate.questions, p.generate.countries, p.generate.generations
    )
    .ok();
    writeln!(o, "  train: at most {steps} optimizer steps over at most {n_train} records (about {})", human(train_s))
        .ok();
    writeln!(o, "  probe after: {} prompts (about {})", p.probe_prompts, human(probe_s)).ok();
    let total = 2.0 * probe_s + teacher_s + gen_s + train_s;
    writeln!(
        o,
        "estimated time: about {}{} (stages already finished in the output folder are skipped)\n{NOTE}",
        human(total),
        if p.teacher_served { " plus the server's" } else { "" }
    )
    .ok();
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human(42.4), "42 s");
        assert_eq!(human(400.0), "7 min");
        assert_eq!(human(7200.0), "2.0 h");
    }
}
