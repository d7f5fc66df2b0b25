//! WVS-7 survey data: questions with their answer options, countries, and human answer
//! distributions per (question, country). Coverage is ragged (19 countries have every question,
//! most have 9), so everything downstream asks "which questions does this country have?".
pub mod import;

use crate::util::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

pub const QUESTIONS_FILE: &str = "wvs7_questions.jsonl";
pub const DISTRIBUTIONS_FILE: &str = "wvs7_country_distributions.jsonl";
pub const COUNTRIES_FILE: &str = "countries.csv";

/// Party-list questions (Q223: 969 party codes) are flagged ordinal in the source metadata,
/// but their codes are identifiers, not a scale; nothing with this many options is a scale.
const MAX_SCALE_OPTIONS: usize = 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AnswerOption {
    pub code: i64,
    pub label: String,
    /// Value used for means; `None` for non-ordinal answers (e.g. "Other").
    pub score: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Question {
    pub id: String,
    pub text: String,
    pub label: String,
    pub category: String,
    pub options: Vec<AnswerOption>,
    /// Ordinal questions have a mean; nominal ones (a choice among aims) do not.
    pub ordinal: bool,
}

impl Question {
    /// Min and max option score: the scale used to map a mean onto [0, 1].
    pub fn score_range(&self) -> Option<(f64, f64)> {
        if !self.ordinal {
            return None;
        }
        let scores: Vec<f64> = self.options.iter().filter_map(|o| o.score).collect();
        let lo = scores.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        (hi > lo).then_some((lo, hi))
    }

    /// Whether the question can be asked as one multiple-choice prompt (not a 969-party list).
    pub fn probeable(&self) -> bool {
        self.options.len() <= MAX_SCALE_OPTIONS
    }

    /// Whether the question takes part in mean-based correlation.
    pub fn is_scored(&self) -> bool {
        self.score_range().is_some()
    }

    pub fn option_index(&self, code: i64) -> Option<usize> {
        self.options.iter().position(|o| o.code == code)
    }

    /// Expected score of a distribution over this question's options (same order as `options`),
    /// renormalised over the options that carry a score.
    pub fn expected_score(&self, probs: &[f64]) -> Option<f64> {
        if !self.ordinal {
            return None;
        }
        let (mut num, mut den) = (0.0, 0.0);
        for (o, p) in self.options.iter().zip(probs) {
            if let Some(s) = o.score {
                num += p * s;
                den += p;
            }
        }
        (den > 0.0).then(|| num / den)
    }

    /// `score` mapped to [0, 1] with the question's option score range.
    pub fn normalise(&self, score: f64) -> Option<f64> {
        self.score_range().map(|(lo, hi)| (score - lo) / (hi - lo))
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Country {
    pub iso3: String,
    /// Name used in prompts ("Great Britain", "South Korea"): the WVS name, else the ISO name.
    pub name: String,
    pub continent: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct HumanAnswers {
    /// Proportion per option, in the question's option order; sums to 1.
    pub distribution: Vec<f64>,
    pub mean: Option<f64>,
    pub n: Option<u64>,
    pub source: String,
}

#[derive(Debug, Clone)]
pub struct Survey {
    pub dir: PathBuf,
    /// Value questions in questionnaire order.
    pub questions: Vec<Question>,
    pub countries: BTreeMap<String, Country>,
    answers: HashMap<(String, String), HumanAnswers>,
    question_index: HashMap<String, usize>,
}

#[derive(Deserialize)]
struct RawQuestion {
    qid: String,
    category: String,
    is_value_question: bool,
    label: String,
    #[serde(default)]
    text: Option<String>,
    options: Vec<AnswerOption>,
    ordinal: bool,
}

#[derive(Deserialize)]
struct RawAnswer {
    qid: String,
    country: String,
    distribution: BTreeMap<String, f64>,
    #[serde(default)]
    n: Option<f64>,
    source: String,
}

#[derive(Deserialize)]
struct RawCountry {
    iso3: String,
    name: String,
    wvs_name: String,
    continent: String,
}

/// Sort key for "Q12", "Q234A": number first, then suffix.
pub fn question_sort_key(id: &str) -> (u32, String) {
    let digits: String = id.chars().skip(1).take_while(|c| c.is_ascii_digit()).collect();
    let rest: String = id.chars().skip(1 + digits.len()).collect();
    (digits.parse().unwrap_or(u32::MAX), rest)
}

fn read_lines(path: &Path) -> Result<Vec<(usize, String)>> {
    let text = crate::util::io::read_input_text(path, crate::util::io::Cap::Table)?;
    Ok(text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, l)| (i + 1, l.to_string())).collect())
}

impl Survey {
    /// Load and validate the project's survey files from `dir` (normally `data/wvs`).
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let mut questions = Vec::new();
        let qpath = dir.join(QUESTIONS_FILE);
        for (line, text) in read_lines(&qpath)? {
            let raw: RawQuestion = serde_json::from_str(&text)
                .map_err(|e| Error::data(&qpath, line, format!("malformed question record: {e}")))?;
            if !raw.is_value_question {
                continue;
            }
            if raw.options.is_empty() {
                return Err(Error::data(&qpath, line, format!("question {} has no options", raw.qid)));
            }
            let ordinal = raw.ordinal && raw.options.len() <= MAX_SCALE_OPTIONS;
            let text = raw.text.filter(|t| !t.trim().is_empty()).unwrap_or_else(|| raw.label.clone());
            questions.push(Question {
                id: raw.qid,
                text,
                label: raw.label,
                category: raw.category,
                options: raw.options,
                ordinal,
            });
        }
        questions.sort_by_key(|q| question_sort_key(&q.id));
        let mut question_index = HashMap::new();
        for (i, q) in questions.iter().enumerate() {
            if question_index.insert(q.id.clone(), i).is_some() {
                return Err(Error::data(&qpath, 0, format!("duplicate question id {}", q.id)));
            }
        }

        let cpath = dir.join(COUNTRIES_FILE);
        let mut countries = BTreeMap::new();
        let mut rdr = csv::Reader::from_reader(crate::util::io::open_input(&cpath, crate::util::io::Cap::Table)?);
        for (i, rec) in rdr.deserialize::<RawCountry>().enumerate() {
            let c = rec.map_err(|e| Error::data(&cpath, i + 2, format!("malformed country row: {e}")))?;
            let name = if c.wvs_name.trim().is_empty() { c.name } else { c.wvs_name };
            countries.insert(c.iso3.clone(), Country { iso3: c.iso3, name, continent: c.continent });
        }

        let mut survey = Survey { dir: dir.clone(), questions, countries, answers: HashMap::new(), question_index };
        let apath = dir.join(DISTRIBUTIONS_FILE);
        for (line, text) in read_lines(&apath)? {
            let raw: RawAnswer = serde_json::from_str(&text)
                .map_err(|e| Error::data(&apath, line, format!("malformed distribution record: {e}")))?;
            survey.add_answer(raw).map_err(|msg| Error::data(&apath, line, msg))?;
        }
        Ok(survey)
    }

    fn add_answer(&mut self, raw: RawAnswer) -> std::result::Result<(), String> {
        let Some(&qi) = self.question_index.get(&raw.qid) else {
            return Err(format!("unknown question id {:?}", raw.qid));
        };
        if !self.countries.contains_key(&raw.country) {
            return Err(format!("unknown country {:?} (not in {COUNTRIES_FILE})", raw.country));
        }
        let q = &self.questions[qi];
        let mut dist = vec![0.0; q.options.len()];
        for (code, p) in &raw.distribution {
            let code: i64 = code.parse().map_err(|_| format!("{}: option code {code:?} is not an integer", raw.qid))?;
            let idx = q.option_index(code).ok_or_else(|| {
                format!("{} {}: option code {code} is not an option of the question", raw.qid, raw.country)
            })?;
            if !(0.0..=1.0 + 1e-9).contains(p) {
                return Err(format!("{} {}: proportion {p} for code {code} is outside [0, 1]", raw.qid, raw.country));
            }
            dist[idx] = *p;
        }
        let sum: f64 = dist.iter().sum();
        if (sum - 1.0).abs() > 1e-4 {
            return Err(format!("{} {}: distribution sums to {sum:.6}, not 1", raw.qid, raw.country));
        }
        let mean = q.expected_score(&dist);
        let key = (raw.qid.clone(), raw.country.clone());
        if self.answers.contains_key(&key) {
            return Err(format!("duplicate record for ({}, {})", raw.qid, raw.country));
        }
        let n = raw.n.map(|n| n as u64);
        self.answers.insert(key, HumanAnswers { distribution: dist, mean, n, source: raw.source });
        Ok(())
    }

    pub fn question(&self, id: &str) -> Result<&Question> {
        self.question_index.get(id).map(|&i| &self.questions[i]).ok_or_else(|| Error::UnknownQuestion(id.to_string()))
    }

    pub fn country(&self, iso3: &str) -> Result<&Country> {
        self.countries.get(iso3).ok_or_else(|| Error::UnknownCountry(iso3.to_string()))
    }

    pub fn answers(&self, qid: &str, country: &str) -> Option<&HumanAnswers> {
        self.answers.get(&(qid.to_string(), country.to_string()))
    }

    /// Questions (in questionnaire order) that have human answers for `country`.
    pub fn questions_for(&self, country: &str) -> Vec<&Question> {
        self.questions.iter().filter(|q| self.answers(&q.id, country).is_some()).collect()
    }

    /// Countries with at least `min_questions` scored questions, in ISO3 order.
    pub fn countries_with(&self, min_questions: usize) -> Vec<&Country> {
        self.countries
            .values()
            .filter(|c| self.questions_for(&c.iso3).iter().filter(|q| q.is_scored()).count() >= min_questions)
            .collect()
    }

    pub fn categories(&self) -> Vec<String> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for q in &self.questions {
            if seen.insert(q.category.clone()) {
                out.push(q.category.clone());
            }
        }
        out
    }

    pub fn n_answers(&self) -> usize {
        self.answers.len()
    }

    /// Human-readable coverage table: per country, per category.
    pub fn stats_table(&self) -> String {
        use std::fmt::Write;
        let cats = self.categories();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} questions ({} scored, {} nominal), {} countries with data, {} (question, country) records\n",
            self.questions.len(),
            self.questions.iter().filter(|q| q.is_scored()).count(),
            self.questions.iter().filter(|q| !q.is_scored()).count(),
            self.countries.values().filter(|c| !self.questions_for(&c.iso3).is_empty()).count(),
            self.answers.len()
        );
        let _ = writeln!(out, "categories:");
        for (i, c) in cats.iter().enumerate() {
            let n = self.questions.iter().filter(|q| &q.category == c).count();
            let _ = writeln!(out, "  C{:<2} {:3} questions  {}", i + 1, n, c);
        }
        let _ = write!(out, "\ncountry continent      total scored");
        for i in 0..cats.len() {
            let _ = write!(out, " {:>4}", format!("C{}", i + 1));
        }
        let _ = writeln!(out);
        let mut rows: Vec<_> = self
            .countries
            .values()
            .map(|c| (c, self.questions_for(&c.iso3)))
            .filter(|(_, qs)| !qs.is_empty())
            .collect();
        rows.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.iso3.cmp(&b.0.iso3)));
        for (c, qs) in rows {
            let scored = qs.iter().filter(|q| q.is_scored()).count();
            let _ = write!(out, "{:<7} {:<14} {:5} {:6}", c.iso3, c.continent, qs.len(), scored);
            for cat in &cats {
                let _ = write!(out, " {:4}", qs.iter().filter(|q| &q.category == cat).count());
            }
            let _ = writeln!(out);
        }
        out
    }
}

/// File in the survey folder mapping category groups to WVS categories.
pub const GROUPS_FILE: &str = "category_groups.toml";

/// Group name -> categories.
pub type CategoryGroups = BTreeMap<String, Vec<String>>;

impl Survey {
    /// The recipe's grouping if it has one, else the data folder's `category_groups.toml`, else
    /// none. Every named category must exist.
    pub fn category_groups(&self, recipe: Option<&CategoryGroups>) -> Result<(CategoryGroups, String)> {
        let path = self.dir.join(GROUPS_FILE);
        let (groups, source) = match recipe {
            Some(g) => (g.clone(), "recipe [survey.category_groups]".to_string()),
            None if path.exists() => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct File {
                    groups: CategoryGroups,
                }
                let text = crate::util::io::read_input_text(&path, crate::util::io::Cap::Recipe)?;
                let f: File = toml::from_str(&text).map_err(|e| Error::data(&path, 0, e.message().to_string()))?;
                (f.groups, path.display().to_string())
            }
            None => return Ok((CategoryGroups::new(), String::new())),
        };
        let known = self.categories();
        for (g, cats) in &groups {
            if let Some(c) = cats.iter().find(|c| !known.contains(c)) {
                return Err(Error::Invalid(format!(
                    "{source}: group {g:?} names unknown category {c:?}; categories: {}",
                    known.join("; ")
                )));
            }
        }
        Ok((groups, source))
    }
}
