//! The probe: build prompts for the selected (question, country) pairs in every template and
//! option order the recipe asks for, score them with a model (resuming from a scoring cache),
//! map the probabilities back to the question's option order and take expected scores.
use crate::lm::Lm;
use crate::model::radix::PrefixCache;
use crate::prompt::{self, Prompt};
use crate::recipe::ProbeRecipe;
use crate::score::{OptionScores, ScoreRequest};
use crate::survey::{Question, Survey};
use crate::util::error::{Error, Result};
use crate::util::io::{sha256_hex, JsonlLog};
use crate::util::shard::Shard;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One scored prompt: everything needed to audit or recompute a number in the report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    pub id: String,
    pub question_id: String,
    pub country: String,
    pub category: String,
    pub template: String,
    pub prompt: String,
    pub prompt_sha256: String,
    /// Labels in the order shown.
    pub labels: Vec<String>,
    /// The question's option codes, in its own order (the order of `raw` and `probs`).
    pub codes: Vec<i64>,
    /// `order[pos]`: the option (index into `codes`) shown at position `pos`; empty = as listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub order: Vec<usize>,
    pub raw: Vec<f64>,
    /// Renormalised option probabilities in the question's option order.
    pub probs: Vec<f64>,
    /// The same by position shown (for position bias); empty when the order is the original.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub position_probs: Vec<f64>,
    /// Probability mass on the option labels before renormalising.
    pub mass: f64,
    /// Served model read by top-k log-probabilities: at most this much label mass fell outside
    /// the top k and was not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unread_mass: Option<f64>,
    pub n_tokens: usize,
    pub expected_score: Option<f64>,
    pub human_mean: Option<f64>,
    pub human_distribution: Vec<f64>,
}

/// The (question, country) pairs a recipe selects, in a stable order (country, then questionnaire).
pub fn select_pairs<'a>(
    recipe: &ProbeRecipe,
    survey: &'a Survey,
) -> Result<Vec<(&'a Question, &'a crate::survey::Country)>> {
    let s = &recipe.survey;
    let countries: Vec<&crate::survey::Country> = if s.countries.is_empty() {
        survey.countries_with(s.min_questions)
    } else {
        s.countries.iter().map(|c| survey.country(c)).collect::<Result<_>>()?
    };
    let questions: Option<Vec<&Question>> = (!s.questions.is_empty())
        .then(|| s.questions.iter().map(|q| survey.question(q)).collect::<Result<_>>())
        .transpose()?;
    let cats = survey.categories();
    for c in &s.categories {
        if !cats.contains(c) {
            return Err(Error::Invalid(format!("unknown category {c:?}; categories: {}", cats.join("; "))));
        }
    }
    let mut pairs = Vec::new();
    for c in countries {
        for q in survey.questions_for(&c.iso3) {
            let wanted = q.probeable()
                && questions.as_ref().map(|qs| qs.iter().any(|x| x.id == q.id)).unwrap_or(true)
                && (s.categories.is_empty() || s.categories.contains(&q.category));
            if wanted {
                pairs.push((q, c));
            }
        }
    }
    if pairs.is_empty() {
        return Err(Error::Invalid("the selection has no (question, country) pair with human answers".into()));
    }
    Ok(pairs)
}

/// One prompt to build: a (question, country) pair, or a question alone for the country-blind
/// template, in one template and one option order.
pub struct Variant<'a> {
    pub id: String,
    pub question: &'a Question,
    pub country: Option<&'a crate::survey::Country>,
    pub template: &'a crate::recipe::PromptSection,
    pub order: prompt::Order,
}

/// Every prompt a recipe asks for, in a stable order: per selected pair, each template and each
/// option order; then the country-blind prompts, once per question.
pub fn variants<'a>(recipe: &'a ProbeRecipe, survey: &'a Survey) -> Result<Vec<Variant<'a>>> {
    let pairs = select_pairs(recipe, survey)?;
    let sc = &recipe.scoring;
    let templates: Vec<&crate::recipe::PromptSection> =
        std::iter::once(&recipe.prompt).chain(recipe.templates.iter()).collect();
    let mut out = Vec::new();
    for (q, c) in &pairs {
        for t in &templates {
            for order in prompt::orders(sc.orders, q.options.len(), sc.cyclic_max_options) {
                let id = prompt::prompt_id(&q.id, Some(&c.iso3), &t.template_name, &order.name);
                out.push(Variant { id, question: q, country: Some(c), template: t, order });
            }
        }
    }
    if let Some(b) = &recipe.blind {
        let mut seen = std::collections::HashSet::new();
        for (q, _) in &pairs {
            if !seen.insert(q.id.clone()) {
                continue;
            }
            for order in prompt::orders(sc.orders, q.options.len(), sc.cyclic_max_options) {
                let id = prompt::prompt_id(&q.id, None, &b.template_name, &order.name);
                out.push(Variant { id, question: q, country: None, template: b, order });
            }
        }
    }
    Ok(out)
}

/// Append-only cache of option scores, keyed by model hash and prompt hash. Read once on open;
/// each batch is appended and synced, so a killed run loses at most the batch in flight.
pub struct ScoreCache {
    log: JsonlLog,
    entries: HashMap<String, OptionScores>,
}

#[derive(Serialize, Deserialize)]
struct CacheLine {
    key: String,
    scores: OptionScores,
}

impl ScoreCache {
    pub fn open(dir: &Path, model_sha: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(format!("scores-{}.jsonl", &model_sha[..16.min(model_sha.len())]));
        let (log, lines) = JsonlLog::open::<CacheLine>(&path)?;
        Ok(Self { log, entries: lines.into_iter().map(|l| (l.key, l.scores)).collect() })
    }

    pub fn key(prompt: &Prompt) -> String {
        let mut key = format!("{}\u{1f}{}", prompt.text, prompt.labels.join("\u{1f}"));
        // Scores of prompts whose labels prefix each other ("1", "10") changed when such labels
        // stopped double counting; their old cache entries must not be reused.
        let nested =
            prompt.labels.iter().any(|a| prompt.labels.iter().any(|b| b.len() > a.len() && b.starts_with(a.as_str())));
        if nested {
            key.push_str("\u{1f}exclusive-prefix");
        }
        sha256_hex(key.as_bytes())
    }

    /// The cached scores of `key` if they fit a prompt with `n_labels` labels: one finite
    /// probability per label. A damaged line that does not is scored again.
    pub fn get_valid(&self, key: &str, n_labels: usize) -> Option<&OptionScores> {
        self.entries.get(key).filter(|s| {
            s.probs.len() == n_labels
                && s.raw.len() == n_labels
                && s.mass.is_finite()
                && s.probs.iter().chain(&s.raw).all(|p| p.is_finite())
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn append(&mut self, new: Vec<(String, OptionScores)>) -> Result<()> {
        let lines: Vec<CacheLine> =
            new.iter().map(|(key, scores)| CacheLine { key: key.clone(), scores: scores.clone() }).collect();
        self.log.append(&lines)?;
        self.entries.extend(new);
        Ok(())
    }
}

pub struct ProbeOptions {
    pub batch: usize,
    pub shard: Option<Shard>,
    pub cache_dir: PathBuf,
    pub progress: bool,
}

/// The prompts of `variants`, built for `model`.
pub fn build_prompts(vars: &[Variant], model: &dyn Lm) -> Result<Vec<Prompt>> {
    vars.iter().map(|v| prompt::build_ordered(v.template, v.question, v.country, &v.order, model)).collect()
}

/// The order prompts are scored in: one country at a time, then question by question with its
/// templates and option orders side by side (the order `variants` gives). Prompts that share a
/// prefix meet in one batch, and a country's persona prefix stays in the prefix cache between
/// batches.
pub fn scoring_order(prompts: &[Prompt], todo: &mut [usize]) {
    todo.sort_by(|&a, &b| prompts[a].country.cmp(&prompts[b].country).then(a.cmp(&b)));
}

/// Score every prompt the recipe asks for and return one sample per prompt, in `variants` order.
pub fn run(recipe: &ProbeRecipe, survey: &Survey, model: &dyn Lm, opts: &ProbeOptions) -> Result<Vec<Sample>> {
    let mut vars = variants(recipe, survey)?;
    if let Some(sh) = opts.shard {
        vars = vars.into_iter().enumerate().filter(|(i, _)| i % sh.count == sh.index).map(|(_, v)| v).collect();
    }
    let prompts = build_prompts(&vars, model)?;
    let mut cache = ScoreCache::open(&opts.cache_dir, &model.scoring_id())?;
    let keys: Vec<String> = prompts.iter().map(ScoreCache::key).collect();
    let mut todo: Vec<usize> =
        (0..prompts.len()).filter(|&i| cache.get_valid(&keys[i], prompts[i].labels.len()).is_none()).collect();
    scoring_order(&prompts, &mut todo);
    todo.dedup_by_key(|i| keys[*i].clone());
    let bar = crate::util::progress::bar(todo.len() as u64, "scoring", opts.progress);
    if prompts.len() > todo.len() {
        eprintln!(
            "{} of {} prompts found in the scoring cache {}",
            prompts.len() - todo.len(),
            prompts.len(),
            cache.log.path().display()
        );
    }
    let mut prefixes = PrefixCache::new(recipe.scoring.prefix_cache_mib);
    // A served model takes its requests in flight at once: batches at least that large.
    for chunk in todo.chunks(opts.batch.max(model.parallelism()).max(1)) {
        let reqs: Vec<ScoreRequest> = chunk
            .iter()
            .map(|&i| ScoreRequest { prompt: prompts[i].text.clone(), labels: prompts[i].labels.clone() })
            .collect();
        let scores = model.score(&reqs, &mut prefixes)?;
        cache.append(chunk.iter().map(|&i| keys[i].clone()).zip(scores).collect())?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let st = prefixes.stats;
    if st.row_tokens > 0 && opts.progress {
        eprintln!(
            "prefix reuse: {} of {} tokens computed ({:.0}%)",
            st.computed,
            st.row_tokens,
            100.0 * st.computed as f64 / st.row_tokens as f64
        );
    }
    let mut samples = Vec::with_capacity(prompts.len());
    for ((p, v), key) in prompts.into_iter().zip(&vars).zip(&keys) {
        let s = cache
            .get_valid(key, p.labels.len())
            .ok_or_else(|| Error::Invalid(format!("prompt {} has no valid scores after scoring", p.id)))?
            .clone();
        let q = v.question;
        let human = v.country.and_then(|c| survey.answers(&q.id, &c.iso3));
        let identity = p.order.iter().enumerate().all(|(pos, &i)| pos == i);
        let probs = prompt::to_original(&p.order, &s.probs);
        samples.push(Sample {
            id: p.id,
            question_id: p.question_id,
            country: p.country,
            category: q.category.clone(),
            template: p.template,
            prompt_sha256: sha256_hex(p.text.as_bytes()),
            prompt: p.text,
            labels: p.labels,
            codes: q.options.iter().map(|o| o.code).collect(),
            expected_score: q.expected_score(&probs),
            raw: prompt::to_original(&p.order, &s.raw),
            position_probs: if identity { vec![] } else { s.probs.clone() },
            order: if identity { vec![] } else { p.order },
            probs,
            mass: s.mass,
            unread_mass: s.unread_mass,
            n_tokens: s.n_tokens,
            human_mean: human.and_then(|h| h.mean),
            human_distribution: human.map(|h| h.distribution.clone()).unwrap_or_default(),
        });
    }
    Ok(samples)
}

impl Sample {
    /// Probabilities by position shown.
    pub fn by_position(&self) -> &[f64] {
        if self.position_probs.is_empty() {
            &self.probs
        } else {
            &self.position_probs
        }
    }
}
