//! The teacher writes a synthetic dataset in one of three modes:
//! - `qa`: culture QA per (country, WVS category) from few-shot examples, parsed and validated;
//! - `soft-labels`: the teacher's own option distributions on paraphrased training-split survey
//!   items, per country persona (distillation targets);
//! - `survey-grounded`: paraphrased training-split questions whose targets are the human answer
//!   distributions (CultureLLM-style semantic augmentation).
//!
//! Every item is seeded from (run seed, item id), written append-only with a status log, and
//! checked against the held-out questions; a killed run resumes without loss or duplicates.
pub mod contrast;
pub mod dataset;
pub mod leak;
pub mod parse;
pub mod plan;
mod record;

use crate::generate::dataset::Record;
pub use crate::recipe::generate::{FewShot, GenMode, GenerateSection};
use crate::recipe::{DistillRecipe, ModelSection};
use crate::survey::{Country, Survey};
use crate::util::error::{Error, Result};
use crate::util::io::{sha256_hex, write_json, JsonlLog};
use crate::util::shard::Shard;
use leak::{Guard, Split};
use record::{Ctx, Outcome};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// One unit of work: a record (or a rejection) is produced for each.
#[derive(Debug, Clone)]
struct Item {
    id: String,
    country: String,
    category: String,
    question_id: Option<String>,
    /// Which paraphrase of the question (0: the first; ids and seeds of 0 are those of a
    /// one-paraphrase generation).
    variant: usize,
    /// Options listed in reverse (`[generate] orders = "reversed"`).
    reversed: bool,
}

/// One line of the status log: what happened to each work item.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct LogLine {
    id: String,
    /// "kept", "rejected", or "leak".
    status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(default)]
    tokens: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Card {
    pub name: String,
    pub mode: String,
    pub teacher: crate::util::manifest::ModelInfo,
    pub settings: GenerateSection,
    pub settings_sha256: String,
    pub split_file: PathBuf,
    pub shard: Option<Shard>,
    pub status: String,
    pub work_items: usize,
    pub kept: usize,
    pub rejected: BTreeMap<String, usize>,
    pub leakage_dropped: usize,
    /// A few dropped items and the held-out question each was too close to.
    pub leakage_examples: Vec<String>,
    pub by_country: BTreeMap<String, usize>,
    pub by_category: BTreeMap<String, usize>,
    pub tokens_generated: usize,
    pub seconds: f64,
}

pub struct GenerateArgs {
    pub recipe: PathBuf,
    pub out: PathBuf,
    pub shard: Option<Shard>,
    pub progress: bool,
    /// Replaces [generate] countries (`mores run` generates for the countries it probes).
    pub countries: Option<Vec<String>>,
    /// `--set section.key=value` recipe overrides.
    pub sets: Vec<String>,
}

pub fn paths(out: &Path, shard: Option<Shard>) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let stem = out.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "dataset".into());
    let stem = match shard {
        Some(s) => format!("{stem}.shard-{}-of-{}", s.index, s.count),
        None => stem,
    };
    let dir = out.parent().unwrap_or(Path::new("."));
    (
        dir.join(format!("{stem}.jsonl")),
        dir.join(format!("{stem}.log.jsonl")),
        dir.join(format!("{stem}.card.json")),
        dir.join(format!("{}.split.json", out.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default())),
    )
}

fn slug(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect()
}

/// The countries a generation covers: the recipe's list, else every country with enough questions.
fn run_countries<'a>(g: &GenerateSection, survey: &'a Survey) -> Result<Vec<&'a Country>> {
    if g.countries.is_empty() {
        Ok(survey.countries_with(g.min_questions))
    } else {
        g.countries.iter().map(|c| survey.country(c)).collect()
    }
}

fn work_items(g: &GenerateSection, survey: &Survey, split: &Split) -> Result<Vec<Item>> {
    let countries = run_countries(g, survey)?;
    let cats = survey.categories();
    for c in &g.categories {
        if !cats.contains(c) {
            return Err(Error::Invalid(format!("unknown category {c:?}; categories: {}", cats.join("; "))));
        }
    }
    let wanted = |c: &str| g.categories.is_empty() || g.categories.iter().any(|x| x == c);
    let mut items = Vec::new();
    match g.mode {
        GenMode::Qa => {
            for c in &countries {
                for cat in cats.iter().filter(|c| wanted(c)) {
                    for k in 0..g.per_pair {
                        items.push(Item {
                            id: format!("qa-{}-{}-{k}", c.iso3, slug(cat)),
                            country: c.iso3.clone(),
                            category: cat.clone(),
                            question_id: None,
                            variant: 0,
                            reversed: false,
                        });
                    }
                }
            }
        }
        GenMode::SoftLabels | GenMode::SurveyGrounded => {
            let prefix = if g.mode == GenMode::SoftLabels { "sl" } else { "sg" };
            let mut train: Vec<&String> =
                split.train.iter().filter(|q| survey.question(q).is_ok_and(|q| wanted(&q.category))).collect();
            if let Some(n) = g.max_questions {
                train = crate::util::seed::sample_in_order(&train, n, g.seed ^ 0x9_0E57);
            }
            for qid in train {
                let q = survey.question(qid)?;
                for variant in 0..g.paraphrases {
                    let tag = if variant == 0 { String::new() } else { format!("p{variant}-") };
                    let reversed: &[bool] =
                        if g.orders == crate::recipe::OrderMode::Original { &[false] } else { &[false, true] };
                    for c in &countries {
                        if survey.answers(qid, &c.iso3).is_some() {
                            for &rev in reversed {
                                items.push(Item {
                                    id: format!("{prefix}-{qid}-{tag}{}{}", c.iso3, if rev { "~rev" } else { "" }),
                                    country: c.iso3.clone(),
                                    category: q.category.clone(),
                                    question_id: Some(qid.clone()),
                                    variant,
                                    reversed: rev,
                                });
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(max) = g.max_items {
        items = crate::util::seed::sample_in_order(&items, max, g.seed ^ 0x5EED);
    }
    if items.is_empty() {
        return Err(Error::Invalid("generate: no work items for these countries and categories".into()));
    }
    Ok(items)
}

/// The split is shared by every shard and by evaluation: reused when present (and drawn with the
/// same settings), else drawn and written.
fn shared_split(split_path: &Path, g: &GenerateSection, survey: &Survey) -> Result<Split> {
    if split_path.exists() {
        let s = Split::load(split_path)?;
        if s.seed != g.seed || s.heldout_fraction != g.heldout_fraction || s.group_ngram != g.leak_ngram {
            return Err(Error::Invalid(format!(
                "{} was drawn with another seed or held-out fraction; choose another --out",
                split_path.display()
            )));
        }
        return Ok(s);
    }
    let s = Split::draw(survey, g.seed, g.heldout_fraction, g.leak_ngram, g.leak_threshold)?;
    write_json(split_path, &s)?;
    Ok(s)
}

/// Resume: what is already done, from the records themselves and the status log. Returns the
/// open log, its lines, the open records file and the ids of finished items.
fn resume(log_path: &Path, out: &Path) -> Result<(JsonlLog, Vec<LogLine>, JsonlLog, HashSet<String>)> {
    let (mut log_file, mut log) = JsonlLog::open::<LogLine>(log_path)?;
    let (out_file, records) = JsonlLog::open::<Record>(out)?;
    let logged: HashSet<String> = log.iter().map(|l| l.id.clone()).collect();
    let mut kept_ids: HashSet<String> = HashSet::new();
    for r in records {
        if !logged.contains(&r.id) {
            let line = LogLine { id: r.id.clone(), status: "kept".into(), reason: None, tokens: 0 };
            log_file.append(std::slice::from_ref(&line))?;
            log.push(line);
        }
        kept_ids.insert(r.id);
    }
    // An item is done when its record is on disk, or when it was rejected or dropped; a "kept"
    // line whose record was cut off by a kill is redone.
    log.retain(|l| l.status != "kept" || kept_ids.contains(&l.id));
    let done: HashSet<String> = log.iter().map(|l| l.id.clone()).collect();
    Ok((log_file, log, out_file, done))
}

pub fn generate(a: &GenerateArgs) -> Result<Card> {
    let recipe = DistillRecipe::load_with(&a.recipe, &a.sets)?;
    let err = |msg: &str| Error::Recipe { path: a.recipe.clone(), msg: msg.into() };
    let mut g = recipe.generate.clone().ok_or_else(|| err("no [generate] section"))?;
    if let Some(c) = &a.countries {
        g.countries = c.clone();
    }
    let teacher_sec: ModelSection = recipe.teacher.clone().ok_or_else(|| err("no [teacher] section"))?;
    if teacher_sec.path.is_none() && teacher_sec.endpoint.is_none() {
        return Err(err("no teacher model: set [teacher] path or endpoint"));
    }
    let survey = Survey::load(&g.data)?;
    let (out, log_path, card_path, split_path) = paths(&a.out, a.shard);
    let _writer = crate::util::lock::OutputLock::file(&out)?;
    let settings_sha256 = sha256_hex(serde_json::to_string(&(&g, &recipe.prompt))?.as_bytes());
    let split = shared_split(&split_path, &g, &survey)?;
    let mut items = work_items(&g, &survey, &split)?;
    if let Some(s) = a.shard {
        items = items.into_iter().enumerate().filter(|(i, _)| i % s.count == s.index).map(|(_, it)| it).collect();
    }
    if card_path.exists() {
        let old: Card = crate::util::io::read_json(&card_path)?;
        if old.settings_sha256 != settings_sha256 {
            return Err(Error::Invalid(format!(
                "{} was generated with other settings; choose another --out or delete it",
                out.display()
            )));
        }
    }
    let teacher = crate::lm::open(&teacher_sec, "teacher")?;
    let teacher = teacher.as_ref();
    let guard = Guard::new(&survey, &split, g.leak_ngram, g.leak_threshold)?;

    let (mut log_file, mut log, mut out_file, done) = resume(&log_path, &out)?;
    let todo: Vec<&Item> = items.iter().filter(|i| !done.contains(&i.id)).collect();
    if !done.is_empty() {
        eprintln!("resuming: {} of {} items already done", items.len() - todo.len(), items.len());
    }
    let mut card = Card {
        name: recipe.name.clone(),
        mode: g.mode.name().into(),
        teacher: teacher.info().clone(),
        settings: g.clone(),
        settings_sha256,
        split_file: split_path.clone(),
        shard: a.shard,
        status: "running".into(),
        work_items: items.len(),
        kept: 0,
        rejected: BTreeMap::new(),
        leakage_dropped: 0,
        leakage_examples: Vec::new(),
        by_country: BTreeMap::new(),
        by_category: BTreeMap::new(),
        tokens_generated: 0,
        seconds: 0.0,
    };
    write_json(&card_path, &card)?;
    let ctx = Ctx {
        g: &g,
        prompt: &recipe.prompt,
        survey: &survey,
        teacher,
        guard: &guard,
        paraphrases: Default::default(),
        drawing: Default::default(),
        countries: run_countries(&g, &survey)?.iter().map(|c| c.iso3.clone()).collect(),
    };
    let bar = crate::util::progress::bar(todo.len() as u64, &format!("generate {}", g.mode.name()), a.progress);
    let t0 = std::time::Instant::now();
    // Items run `parallelism` at a time (a served teacher's requests in flight; one in process)
    // and are written in order as each window ends: a record is written once, and a crash loses
    // only the window in flight, which a rerun redoes with the same seeds.
    for window in todo.chunks(teacher.parallelism().max(1)) {
        let results: Vec<Result<(Outcome, usize)>> = if window.len() == 1 {
            vec![ctx.run(window[0])]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = window.iter().map(|item| s.spawn(|| ctx.run(item))).collect();
                handles.into_iter().map(|h| h.join().expect("generation thread")).collect()
            })
        };
        // In item order up to the first failure, so the file reads as an undisturbed run's.
        for (item, r) in window.iter().zip(results) {
            let (outcome, tokens) = r?;
            let line = match outcome {
                Outcome::Kept(rec) => {
                    out_file.append(std::slice::from_ref(&rec))?;
                    LogLine { id: item.id.clone(), status: "kept".into(), reason: None, tokens }
                }
                Outcome::Rejected(why) => {
                    LogLine { id: item.id.clone(), status: "rejected".into(), reason: Some(why), tokens }
                }
                Outcome::Leak(what) => {
                    LogLine { id: item.id.clone(), status: "leak".into(), reason: Some(what), tokens }
                }
            };
            log_file.append(std::slice::from_ref(&line))?;
            log.push(line);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    card.seconds = t0.elapsed().as_secs_f64();
    fill_counts(&mut card, &log, &crate::util::io::read_jsonl::<Record>(&out)?);
    card.status = "complete".into();
    write_json(&card_path, &card)?;
    Ok(card)
}

fn fill_counts(card: &mut Card, log: &[LogLine], records: &[Record]) {
    card.kept = records.len();
    card.rejected.clear();
    card.leakage_dropped = 0;
    card.leakage_examples.clear();
    card.tokens_generated = log.iter().map(|l| l.tokens).sum();
    for l in log {
        match l.status.as_str() {
            "rejected" => *card.rejected.entry(l.reason.clone().unwrap_or_default()).or_default() += 1,
            "leak" => {
                card.leakage_dropped += 1;
                if card.leakage_examples.len() < 10 {
                    card.leakage_examples.push(l.reason.clone().unwrap_or_default());
                }
            }
            _ => {}
        }
    }
    card.by_country.clear();
    card.by_category.clear();
    for r in records {
        *card.by_country.entry(r.country.clone().unwrap_or_default()).or_default() += 1;
        *card.by_category.entry(r.category.clone().unwrap_or_default()).or_default() += 1;
    }
}

/// Join shard outputs (`NAME.shard-I-of-N.jsonl`) into one dataset with one card.
pub fn merge(shards: &[PathBuf], out: &Path) -> Result<Card> {
    let mut records: Vec<Record> = Vec::new();
    let mut logs: Vec<LogLine> = Vec::new();
    let mut card: Option<Card> = None;
    for s in shards {
        let stem = s.file_stem().map(|x| x.to_string_lossy().to_string()).unwrap_or_default();
        let dir = s.parent().unwrap_or(Path::new("."));
        let c_path = dir.join(format!("{stem}.card.json"));
        let c: Card = crate::util::io::read_json(&c_path)?;
        if let Some(first) = &card {
            if first.settings_sha256 != c.settings_sha256 || first.teacher.sha256 != c.teacher.sha256 {
                return Err(Error::Invalid(format!("{}: generated with other settings or teacher", s.display())));
            }
        }
        records.extend(crate::util::io::read_jsonl::<Record>(s)?);
        let l_path = dir.join(format!("{stem}.log.jsonl"));
        if l_path.exists() {
            logs.extend(crate::util::io::read_jsonl::<LogLine>(&l_path)?);
        }
        card.get_or_insert(c);
    }
    let mut card = card.ok_or_else(|| Error::Invalid("dataset merge needs at least one shard".into()))?;
    let mut seen = HashSet::new();
    records.retain(|r| seen.insert(r.id.clone()));
    records.sort_by(|a, b| a.id.cmp(&b.id));
    let mut seen = HashSet::new();
    logs.retain(|l| seen.insert(l.id.clone()));
    card.shard = None;
    card.work_items = logs.len().max(records.len());
    card.seconds = 0.0;
    fill_counts(&mut card, &logs, &records);
    let (o, l, c, _) = paths(out, None);
    crate::util::io::write_jsonl(&o, &records)?;
    crate::util::io::write_jsonl(&l, &logs)?;
    write_json(&c, &card)?;
    Ok(card)
}

/// `mores dataset stats`: counts by mode, country, category and target kind.
pub fn stats(path: &Path) -> Result<String> {
    use std::fmt::Write as _;
    let data = crate::generate::dataset::read(path)?;
    let mut by: BTreeMap<(&str, String), usize> = BTreeMap::new();
    for (r, l) in &data {
        let kind = match l {
            crate::generate::dataset::Lesson::Text { .. } => "text target".to_string(),
            crate::generate::dataset::Lesson::Labels { .. } => "distribution target".to_string(),
        };
        *by.entry(("kind", kind)).or_default() += 1;
        *by.entry(("mode", r.mode.clone().unwrap_or_else(|| "-".into()))).or_default() += 1;
        *by.entry(("country", r.country.clone().unwrap_or_else(|| "-".into()))).or_default() += 1;
        *by.entry(("category", r.category.clone().unwrap_or_else(|| "-".into()))).or_default() += 1;
    }
    let mut s = format!("{}: {} records\n", path.display(), data.len());
    let mut last = "";
    for ((k, v), n) in by {
        if k != last {
            let _ = writeln!(s, "\n{k}:");
            last = k;
        }
        let _ = writeln!(s, "  {v}: {n}");
    }
    Ok(s)
}
