//! Synthetic-data records (JSONL, one per line): what the generator writes and the trainer reads.
//! A record is either text to imitate (`messages` ending in an assistant turn, or `prompt` plus a
//! text `target`) or a distribution over option labels to match (`prompt` or `messages`,
//! `labels`, and a numeric `target`).
use crate::model::chat::Message;
use crate::util::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub id: String,
    /// sha256 of the record's content fields (everything but `hash` itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
    /// A user turn (wrapped in the student's chat template when it has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Text placed after the user turn (after the chat template's generation prompt), before
    /// the answer: e.g. "Answer: ".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// qa mode: the generated question, its options and the teacher's rationale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rationale: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Target {
    Text(String),
    Distribution(Vec<f64>),
}

/// What a record teaches.
#[derive(Debug, Clone, PartialEq)]
pub enum Lesson {
    /// Causal LM on `answer` after `context` (the user turn, chat-formatted by the trainer).
    Text { user: String, answer: String },
    /// Match `target` over `labels` after the user turn and `answer_prefix`.
    Labels { user: String, labels: Vec<String>, target: Vec<f64> },
}

impl Record {
    /// The record's lesson, or what is missing (named by field).
    pub fn lesson(&self) -> std::result::Result<Lesson, String> {
        let user = match (&self.prompt, &self.messages) {
            (Some(p), _) => p.clone(),
            (None, Some(m)) => m
                .iter()
                .rev()
                .find(|m| m.role == "user")
                .map(|m| m.content.clone())
                .ok_or("messages has no user turn")?,
            (None, None) => return Err("needs `prompt` or `messages`".into()),
        };
        match (&self.target, &self.labels) {
            (Some(Target::Distribution(t)), Some(labels)) => {
                if t.len() != labels.len() {
                    return Err(format!("target has {} probabilities for {} labels", t.len(), labels.len()));
                }
                let s: f64 = t.iter().sum();
                if t.iter().any(|p| !p.is_finite() || *p < 0.0) || (s - 1.0).abs() > 1e-3 {
                    return Err(format!("target is not a probability distribution (sums to {s})"));
                }
                crate::score::check_labels(labels)?;
                Ok(Lesson::Labels { user, labels: labels.clone(), target: t.clone() })
            }
            (Some(Target::Distribution(_)), None) => Err("a distribution `target` needs `labels`".into()),
            (Some(Target::Text(a)), _) => Ok(Lesson::Text { user, answer: a.clone() }),
            (None, _) => {
                let answer = self
                    .messages
                    .as_ref()
                    .and_then(|m| m.last())
                    .filter(|m| m.role == "assistant")
                    .map(|m| m.content.clone())
                    .ok_or("needs `target` (text or distribution) or `messages` ending with an assistant turn")?;
                Ok(Lesson::Text { user, answer })
            }
        }
    }

    /// sha256 over the record as JSON without its `hash` field.
    pub fn content_hash(&self) -> String {
        let mut r = self.clone();
        r.hash = None;
        crate::util::io::sha256_hex(serde_json::to_string(&r).expect("record serialises").as_bytes())
    }
}

/// Read a dataset, checking every line; errors name the file and line.
pub fn read(path: &Path) -> Result<Vec<(Record, Lesson)>> {
    let text = crate::util::io::read_input_text(path, crate::util::io::Cap::Table)?;
    if !text.is_empty() && !text.ends_with('\n') {
        // The JSONL rule: a last line without its newline was cut short. A log would drop it;
        // a dataset about to be trained on is incomplete, which the user must know.
        let line = text.lines().count();
        return Err(Error::data(
            path,
            line,
            "last line is cut short (an interrupted `mores generate`?): rerun the same command to finish it",
        ));
    }
    let mut out = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: Record =
            serde_json::from_str(line).map_err(|e| Error::data(path, i + 1, format!("not a dataset record: {e}")))?;
        let lesson = r.lesson().map_err(|m| Error::data(path, i + 1, format!("record {:?}: {m}", r.id)))?;
        if let Some(h) = &r.hash {
            if *h != r.content_hash() {
                return Err(Error::data(
                    path,
                    i + 1,
                    format!("record {:?}: its hash does not match its content (edited or corrupted); remove the hash field to keep a hand edit", r.id),
                ));
            }
        }
        if let Some(m) = &r.mode {
            use crate::recipe::generate::GenMode;
            let known = [GenMode::Qa, GenMode::SoftLabels, GenMode::SurveyGrounded].map(|g| g.name());
            if !known.contains(&m.as_str()) {
                return Err(Error::data(
                    path,
                    i + 1,
                    format!("record {:?}: unknown mode {m:?} (one of {})", r.id, known.join(", ")),
                ));
            }
        }
        if !ids.insert(r.id.clone()) {
            return Err(Error::data(path, i + 1, format!("duplicate record id {:?}", r.id)));
        }
        out.push((r, lesson));
    }
    if out.is_empty() {
        return Err(Error::data(path, 0, "the dataset has no records: generate one with `mores generate`"));
    }
    Ok(out)
}
