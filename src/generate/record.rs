//! One work item -> one record: the teacher's prompt per mode, parsing, the leakage check, and the
//! record's target (the teacher's text or distribution, or the humans' distribution).
use super::dataset::{Record, Target};
use super::leak::Guard;
use super::{contrast, parse, GenMode, GenerateSection, Item};
use crate::lm::{sample, Lm};
use crate::recipe::PromptSection;
use crate::score::ScoreRequest;
use crate::survey::Survey;
use crate::util::error::Result;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A paraphrase of a question, or why it was rejected, and the tokens it cost.
type Paraphrase = (std::result::Result<String, String>, usize);

pub(super) enum Outcome {
    Kept(Box<Record>),
    Rejected(String),
    Leak(String),
}

pub(super) struct Ctx<'a> {
    pub(super) g: &'a GenerateSection,
    pub(super) prompt: &'a PromptSection,
    pub(super) survey: &'a Survey,
    pub(super) teacher: &'a dyn Lm,
    pub(super) guard: &'a Guard,
    /// Per (question, paraphrase number): the teacher's paraphrase or why it was rejected.
    pub(super) paraphrases: Mutex<HashMap<(String, usize), Paraphrase>>,
    /// One lock per question: its paraphrases are drawn once, in order (a copy is checked against
    /// the earlier ones), however many items of the question are in flight.
    pub(super) drawing: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// ISO3 codes of the generation's countries (the mean a contrast target deviates from).
    pub(super) countries: Vec<String>,
}

impl Ctx<'_> {
    /// Copy `variant` of question `qid`, drawing it (and any earlier copy not drawn yet) once;
    /// the tokens are those this call spent.
    fn paraphrase(&self, qid: &str, variant: usize) -> Result<Paraphrase> {
        let q = self.survey.question(qid)?;
        if self.keeps_wording(variant) {
            return Ok((Ok(q.text.clone()), 0));
        }
        let lock = self.drawing.lock().expect("paraphrase locks").entry(qid.to_string()).or_default().clone();
        let _drawing = lock.lock().expect("question lock");
        let mut spent = 0;
        for v in 0..=variant {
            let known = self.paraphrases.lock().expect("paraphrases").contains_key(&(qid.to_string(), v));
            if !known && !self.keeps_wording(v) {
                let drawn = self.draw_paraphrase(qid, &q.text, v)?;
                spent += drawn.1;
                self.paraphrases.lock().expect("paraphrases").insert((qid.to_string(), v), drawn);
            }
        }
        let p = self.paraphrases.lock().expect("paraphrases")[&(qid.to_string(), variant)].0.clone();
        Ok((p, spent))
    }

    /// The teacher's paraphrase number `variant`, checked against the earlier ones.
    fn draw_paraphrase(&self, qid: &str, text: &str, variant: usize) -> Result<Paraphrase> {
        let mut s = self.g.sampling.clone();
        s.stop = vec!["\n".into()];
        s.max_new_tokens = s.max_new_tokens.min(64);
        let key = if variant == 0 { format!("paraphrase-{qid}") } else { format!("paraphrase-{qid}-{variant}") };
        let mut rng = sample::record_rng(self.g.draw_seed(), &key);
        let prompt = self.g.paraphrase_prompt.replace("{question}", text);
        let out = self.teacher.complete(&prompt, &s, &mut rng)?;
        let mut p = parse::paraphrase(text, &out.text).map_err(String::from);
        let known = self.paraphrases.lock().expect("paraphrases");
        let repeats = |v: &usize| {
            known.get(&(qid.to_string(), *v)).is_some_and(|e| e.0.is_ok() && e.0.as_ref().ok() == p.as_ref().ok())
        };
        if p.is_ok() && (0..variant).any(|v| repeats(&v)) {
            p = Err("paraphrase repeats an earlier one".into());
        }
        Ok((p, out.n_tokens))
    }

    /// Whether copy `variant` of a question is the survey's own wording, not a paraphrase.
    fn keeps_wording(&self, variant: usize) -> bool {
        !self.g.paraphrase || (variant == 0 && self.g.original)
    }

    pub(super) fn run(&self, item: &Item) -> Result<(Outcome, usize)> {
        let country = self.survey.country(&item.country)?;
        let mut rec = Record {
            id: item.id.clone(),
            hash: None,
            mode: Some(self.g.mode.name().into()),
            country: Some(item.country.clone()),
            category: Some(item.category.clone()),
            question_id: item.question_id.clone(),
            messages: None,
            prompt: None,
            answer_prefix: Some(self.prompt.answer_cue.clone()),
            labels: None,
            target: None,
            question: None,
            options: None,
            rationale: None,
            teacher_sha256: Some(self.teacher.info().sha256.clone()),
            seed: Some(self.g.draw_seed()),
        };
        let (outcome, tokens) = match self.g.mode {
            GenMode::Qa => self.qa(&mut rec, item, &country.name)?,
            GenMode::SoftLabels | GenMode::SurveyGrounded => self.survey_item(&mut rec, item, &country.name)?,
        };
        if let Some(o) = outcome {
            return Ok((o, tokens));
        }
        rec.hash = Some(rec.content_hash());
        Ok((Outcome::Kept(Box::new(rec)), tokens))
    }

    /// qa: the teacher writes a question, options, answer and rationale for the country and topic.
    /// Returns a rejection or leak, or None when `rec` was filled.
    fn qa(&self, rec: &mut Record, item: &Item, country: &str) -> Result<(Option<Outcome>, usize)> {
        let mut prompt = self.g.qa_header.clone();
        for ex in &self.g.few_shot {
            prompt.push_str(&qa_block(&ex.country, &ex.category, &ex.question, &ex.options));
            prompt.push_str(&format!("Answer: {}\nRationale: {}\n\n", ex.answer, ex.rationale));
        }
        prompt.push_str(&format!("Country: {country}\nTopic: {}\nQuestion:", item.category));
        let mut s = self.g.sampling.clone();
        s.stop.push("\nCountry:".into());
        let mut rng = sample::record_rng(self.g.draw_seed(), &item.id);
        let out = self.teacher.complete(&prompt, &s, &mut rng)?;
        let tokens = out.n_tokens;
        let qa = match parse::qa(&format!("Question:{}", out.text)) {
            Ok(q) => q,
            Err(why) => return Ok((Some(Outcome::Rejected(why.into())), tokens)),
        };
        if let Some((h, c)) = self.guard.leaks(&qa.question) {
            return Ok((Some(Outcome::Leak(format!("{} ~ {h} ({c:.2})", item.id))), tokens));
        }
        let labels: Vec<String> = (1..=qa.options.len()).map(|i| i.to_string()).collect();
        rec.prompt = Some(crate::prompt::user_text_raw(self.prompt, country, &qa.question, &qa.options));
        rec.target = Some(Target::Text(labels[qa.answer - 1].clone()));
        rec.labels = Some(labels);
        rec.question = Some(qa.question);
        rec.options = Some(qa.options);
        rec.rationale = Some(qa.rationale);
        Ok((None, tokens))
    }

    /// soft-labels / survey-grounded: a (paraphrased) survey question with a distribution target.
    fn survey_item(&self, rec: &mut Record, item: &Item, country: &str) -> Result<(Option<Outcome>, usize)> {
        let qid = item.question_id.as_deref().expect("question items");
        let (para, tokens) = self.paraphrase(qid, item.variant)?;
        let para = match para {
            Ok(p) => p,
            Err(why) => return Ok((Some(Outcome::Rejected(why)), tokens)),
        };
        if let Some((h, c)) = self.guard.leaks(&para).filter(|_| !self.keeps_wording(item.variant)) {
            return Ok((Some(Outcome::Leak(format!("{} ~ {h} ({c:.2})", item.id))), tokens));
        }
        let q = self.survey.question(qid)?;
        let mut options: Vec<String> = q.options.iter().map(|o| o.label.clone()).collect();
        if item.reversed {
            options.reverse();
        }
        let user = crate::prompt::user_text_raw(self.prompt, country, &para, &options);
        let labels: Vec<String> = (1..=options.len()).map(|i| i.to_string()).collect();
        let target = if self.g.mode == GenMode::SurveyGrounded {
            let mut t = self.human_target(qid, &item.country);
            if item.reversed {
                // Label k names the k-th option shown.
                t.reverse();
            }
            t
        } else {
            let chat = crate::prompt::use_chat(self.prompt, self.teacher);
            let text = crate::prompt::render(self.teacher, &user, &self.prompt.answer_cue, chat)?;
            let req = ScoreRequest { prompt: text, labels: labels.clone() };
            let s = self.teacher.score(&[req], &mut crate::model::radix::PrefixCache::new(0))?;
            s.into_iter().next().expect("one request").probs
        };
        rec.prompt = Some(user);
        rec.question = Some(para);
        rec.labels = Some(labels);
        rec.target = Some(Target::Distribution(target));
        Ok((None, tokens))
    }

    /// The country's human distribution, its deviation from the generation's cross-country mean
    /// scaled by `contrast` when that is not 1.
    fn human_target(&self, qid: &str, country: &str) -> Vec<f64> {
        let h = self.survey.answers(qid, country).expect("items have answers");
        if self.g.contrast == 1.0 {
            return h.distribution.clone();
        }
        let all: Vec<&[f64]> = self
            .countries
            .iter()
            .filter_map(|c| self.survey.answers(qid, c).map(|a| a.distribution.as_slice()))
            .collect();
        let mean: Vec<f64> =
            (0..h.distribution.len()).map(|k| all.iter().map(|d| d[k]).sum::<f64>() / all.len() as f64).collect();
        contrast::target(&h.distribution, &mean, self.g.contrast)
    }
}

fn qa_block(country: &str, category: &str, question: &str, options: &[String]) -> String {
    let mut s = format!("Country: {country}\nTopic: {category}\nQuestion: {question}\nOptions:\n");
    for (i, o) in options.iter().enumerate() {
        s.push_str(&format!("{}. {o}\n", i + 1));
    }
    s
}
