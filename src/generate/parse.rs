//! Parsing the teacher's free text into a QA item. Anything that does not parse is rejected
//! with a reason, and the reasons are counted in the dataset card.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QaItem {
    pub question: String,
    pub options: Vec<String>,
    /// 1-based option number.
    pub answer: usize,
    pub rationale: String,
}

/// Parse "Question: ...\nOptions:\n1. ...\n2. ...\nAnswer: k\nRationale: ...".
pub fn qa(text: &str) -> Result<QaItem, &'static str> {
    let mut question = None;
    let mut options: Vec<String> = Vec::new();
    let mut answer = None;
    let mut rationale = String::new();
    let mut in_options = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            continue;
        }
        if let Some(q) = line.strip_prefix("Question:") {
            if question.is_some() {
                break; // the teacher started another item
            }
            question = Some(q.trim().to_string());
            in_options = false;
        } else if line.starts_with("Options:") {
            in_options = true;
        } else if let Some(a) = line.strip_prefix("Answer:") {
            in_options = false;
            let digits: String = a.trim().chars().take_while(|c| c.is_ascii_digit()).collect();
            answer = digits.parse::<usize>().ok().or(Some(0));
        } else if let Some(r) = line.strip_prefix("Rationale:") {
            rationale = r.trim().to_string();
            in_options = false;
        } else if in_options {
            let (num, rest) = line.split_once('.').ok_or("option line without a number")?;
            if num.trim().parse::<usize>().ok() != Some(options.len() + 1) {
                return Err("options not numbered 1, 2, 3, ...");
            }
            options.push(rest.trim().to_string());
        }
    }
    let question = question.filter(|q| q.len() >= 10).ok_or("no question")?;
    if !question.ends_with('?') {
        return Err("question does not end with '?'");
    }
    if options.len() < 2 {
        return Err("fewer than 2 options");
    }
    if options.len() > 10 {
        return Err("more than 10 options");
    }
    if options.iter().any(|o| o.is_empty()) {
        return Err("empty option");
    }
    let mut uniq = options.clone();
    uniq.sort();
    uniq.dedup();
    if uniq.len() != options.len() {
        return Err("duplicate options");
    }
    let answer = answer.ok_or("no answer")?;
    if answer == 0 || answer > options.len() {
        return Err("answer is not one of the options");
    }
    Ok(QaItem { question, options, answer, rationale })
}

/// A paraphrase: the first line, trimmed; rejected when empty, a copy, or implausibly sized.
pub fn paraphrase(original: &str, text: &str) -> Result<String, &'static str> {
    let p = text.lines().map(str::trim).find(|l| !l.is_empty()).ok_or("empty paraphrase")?.to_string();
    let norm = |s: &str| s.to_lowercase().chars().filter(|c| c.is_alphanumeric()).collect::<String>();
    if norm(&p) == norm(original) {
        return Err("paraphrase identical to the original");
    }
    let ratio = p.len() as f64 / original.len().max(1) as f64;
    if !(0.4..=2.5).contains(&ratio) {
        return Err("paraphrase length implausible");
    }
    if !p.ends_with('?') && original.ends_with('?') {
        return Err("paraphrase is not a question");
    }
    Ok(p)
}
