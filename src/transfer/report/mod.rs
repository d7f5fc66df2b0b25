//! The transfer report: did the student's answers move toward the humans' on questions it never
//! trained on, and at which level? Question-level (`within.rs`: per country, r across questions)
//! and country-level (`country.rs`: per question, r across countries, the country-swap control,
//! persona spread) are computed and judged apart (`verdict.rs`), beside references on the same
//! pairs (`reference.rs`: typical answer, lexical and k-neighbour references from the training
//! split and from the student's own training questions, teacher), for the held-out questions and,
//! to tell fitting from transferring, for probed training questions.
mod country;
mod markdown;
mod neighbour;
mod pairs;
mod reference;
mod verdict;
mod within;

pub use country::{derangement, CountryLevel, Profile, QuestionCross, SwapControl, DEFAULT_MIN_COUNTRIES};
pub use markdown::markdown;
pub use neighbour::ranked_neighbours;
pub use pairs::Delta;
pub use reference::{k_name, Neighbour, Reference, References, LEXICAL_SPLIT, LEXICAL_TRAINED};
pub use verdict::{country_level_short, question_level_short};
pub use within::{CountryDelta, GroupDelta, QuestionLevel};

use crate::survey::Survey;
use crate::util::error::{Error, Result};
use pairs::Samples;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub struct Inputs<'a> {
    pub name: String,
    pub survey: &'a Survey,
    pub before: &'a Path,
    pub after: &'a Path,
    pub teacher: Option<&'a Path>,
    pub heldout: &'a [String],
    pub train: &'a [String],
    /// Every training-split question: the first pool of the neighbour references.
    pub train_split: &'a [String],
    /// The questions the student's training data was made from (`trained_questions` of the
    /// dataset): the second pool of the neighbour references; empty leaves those rows out.
    pub trained: &'a [String],
    /// How many nearest questions the k-neighbour references average.
    pub neighbours: usize,
    /// Fewest countries per question for cross-country r.
    pub min_countries: usize,
    pub bootstrap: usize,
    pub seed: u64,
    pub dataset: &'a Path,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubsetReport {
    pub n_questions: usize,
    pub n_countries: usize,
    pub n_pairs: usize,
    pub question_level: QuestionLevel,
    pub country_level: CountryLevel,
    pub references: References,
}

/// The version of transfer.json's layout, its first field. Version 2 added the schema field
/// itself, the references over the student's own training questions, the k-neighbour references,
/// and each reference's CI and difference from the student.
pub const SCHEMA: &str = "mores.transfer/2";

/// What a transfer.json without a schema field is: the layout before the field existed.
fn schema_1() -> String {
    "mores.transfer/1".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TransferReport {
    #[serde(default = "schema_1")]
    pub schema: String,
    pub name: String,
    pub dataset: String,
    pub dataset_records: usize,
    pub heldout: SubsetReport,
    pub train: Option<SubsetReport>,
    /// Held-out questions, question level (within-country r).
    pub verdict_question_level: String,
    /// Held-out questions, country level (cross-country r and swap control).
    pub verdict_country_level: String,
    /// Which level a held-out gain belongs to, and the training questions' fit.
    pub notes: Vec<String>,
    /// The verdicts and notes in one paragraph.
    pub verdict: String,
    #[serde(default)]
    pub stage_seconds: BTreeMap<String, (f64, bool)>,
}

/// One averaged sample per (question, country), whatever orders and templates the probe used.
fn load(dir: &Path, survey: &Survey) -> Result<Samples> {
    let p = dir.join("samples.jsonl");
    let rows: Vec<crate::probe::Sample> = crate::util::io::read_jsonl(&p)?;
    let items = crate::analysis::combine::items(&rows, survey, None);
    Ok(items.into_iter().map(|s| ((s.question_id.clone(), s.country.clone()), s)).collect())
}

fn subset(
    inp: &Inputs,
    qs: &[String],
    before: &Samples,
    after: &Samples,
    teacher: Option<&Samples>,
    tag: &str,
) -> Result<SubsetReport> {
    let pairs = pairs::collect(inp.survey, qs, before, after, teacher)?;
    let question_level = within::compute(&pairs, inp.survey, inp.bootstrap, inp.seed, tag)?;
    let country_level = country::compute(&pairs, inp.min_countries, inp.bootstrap, inp.seed, tag);
    let references = reference::compute(&pairs, inp, teacher, tag)?;
    Ok(SubsetReport {
        n_questions: country::by_question(&pairs).len(),
        n_countries: question_level.countries.len(),
        n_pairs: pairs.len(),
        question_level,
        country_level,
        references,
    })
}

pub fn build(inp: &Inputs) -> Result<TransferReport> {
    let before = load(inp.before, inp.survey)?;
    let after = load(inp.after, inp.survey)?;
    let teacher = inp.teacher.map(|d| load(d, inp.survey)).transpose()?;
    let heldout = subset(inp, inp.heldout, &before, &after, teacher.as_ref(), "heldout")?;
    if heldout.n_countries == 0 {
        return Err(Error::Invalid(
            "transfer report: no held-out (question, country) pair was probed before and after".into(),
        ));
    }
    let train = (!inp.train.is_empty())
        .then(|| subset(inp, inp.train, &before, &after, teacher.as_ref(), "train"))
        .transpose()?;
    let records =
        crate::util::io::read_jsonl::<crate::generate::dataset::Record>(inp.dataset).map(|r| r.len()).unwrap_or(0);
    let (h, c) = (&heldout.question_level, &heldout.country_level);
    let verdict_question_level = verdict::question_level(h);
    let verdict_country_level = verdict::country_level(c, heldout.n_countries);
    let mut notes: Vec<String> = verdict::reading(h, c).into_iter().collect();
    notes.extend(train.as_ref().map(|t| verdict::training(&t.question_level, &t.country_level)));
    let verdict = [verdict_question_level.clone(), verdict_country_level.clone()]
        .into_iter()
        .chain(notes.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    Ok(TransferReport {
        schema: SCHEMA.into(),
        name: inp.name.clone(),
        dataset: inp.dataset.display().to_string(),
        dataset_records: records,
        heldout,
        train,
        verdict_question_level,
        verdict_country_level,
        notes,
        verdict,
        stage_seconds: BTreeMap::new(),
    })
}

/// The distinct source questions of a dataset's records (`question_id`) that the survey knows and
/// that the recipe's training takes gradients on (its validation questions left out:
/// [`crate::train::trained_questions`]), in questionnaire order: what the student was trained on.
/// Empty when the file cannot be read or its records name no question (qa mode).
pub fn trained_questions(
    dataset: &Path,
    survey: &Survey,
    recipe: &crate::recipe::DistillRecipe,
) -> Result<Vec<String>> {
    let records = crate::util::io::read_jsonl::<crate::generate::dataset::Record>(dataset).unwrap_or_default();
    let trained = crate::train::trained_questions(recipe, &records)?;
    let mut qs: Vec<String> = trained.into_iter().filter(|q| survey.question(q).is_ok()).collect();
    qs.sort_by(|a, b| (crate::survey::question_sort_key(a), a).cmp(&(crate::survey::question_sort_key(b), b)));
    Ok(qs)
}

pub fn write(out: &Path, r: &TransferReport) -> Result<()> {
    crate::util::io::write_json(&out.join("transfer.json"), r)?;
    crate::util::io::atomic_write(&out.join("report.md"), markdown(r).as_bytes())?;
    let rows: Vec<(String, f64, f64)> = r
        .heldout
        .question_level
        .countries
        .iter()
        .filter_map(|c| Some((c.iso3.clone(), c.r_before?, c.r_after?)))
        .collect();
    crate::report::svg::dumbbell(
        &out.join("transfer.svg"),
        "Held-out questions: normalised r per country, before -> after",
        "Pearson r (scale-normalised)",
        ("before", "after"),
        &rows,
    )?;
    let qs: Vec<(String, f64, f64)> = r
        .heldout
        .country_level
        .questions
        .iter()
        .filter_map(|q| Some((q.id.clone(), q.r_before?, q.r_after?)))
        .collect();
    crate::report::svg::dumbbell(
        &out.join("transfer-questions.svg"),
        "Held-out questions: cross-country r per question, before -> after",
        "Pearson r across countries (scale-normalised)",
        ("before", "after"),
        &qs,
    )?;
    let h = &r.heldout.question_level;
    let groups: Vec<String> = h.continents.iter().map(|c| format!("{} ({})", c.name, c.n)).collect();
    let bar = |v: Option<f64>, ci: Option<(f64, f64)>| crate::report::svg::Bar { value: v, ci };
    crate::report::svg::bars(
        &out.join("transfer-continents.svg"),
        "Held-out questions per continent: normalised r before, after, and the change (95% CI)",
        "Pearson r (scale-normalised)",
        &groups,
        &["before".to_string(), "after".to_string(), "change".to_string()],
        &[
            h.continents.iter().map(|c| bar(c.r_before, None)).collect(),
            h.continents.iter().map(|c| bar(c.r_after, None)).collect(),
            h.continents.iter().map(|c| bar(c.delta.value, c.delta.ci95)).collect(),
        ],
    )
}
