//! One multiple-choice prompt per (question, country persona). Options are listed in the
//! question's code order and labelled 1..K; label k stands for option k's WVS code.
use crate::error::Result;
use crate::model::Model;
use crate::recipe::{ChatMode, PromptSection};
use crate::survey::{Country, Question};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Prompt {
    pub id: String,
    pub question_id: String,
    pub country: String,
    pub template: String,
    /// The exact string given to the tokenizer.
    pub text: String,
    pub labels: Vec<String>,
    pub codes: Vec<i64>,
}

/// User-turn text for one question and country (no chat wrapping, no answer cue).
pub fn user_text(p: &PromptSection, q: &Question, country: &Country) -> String {
    let options: Vec<String> = q.options.iter().map(|o| o.label.clone()).collect();
    user_text_raw(p, &country.name, &q.text, &options)
}

/// The same for any question text and option texts (paraphrased or generated items).
pub fn user_text_raw(p: &PromptSection, country: &str, question: &str, options: &[String]) -> String {
    let options: Vec<String> = options
        .iter()
        .enumerate()
        .map(|(i, o)| p.option.replace("{label}", &(i + 1).to_string()).replace("{text}", o))
        .collect();
    p.user.replace("{country}", country).replace("{question}", question).replace("{options}", &options.join("\n"))
}

pub fn use_chat(p: &PromptSection, model: &Model) -> bool {
    match p.chat {
        ChatMode::Auto => model.is_chat(),
        ChatMode::Always => true,
        ChatMode::Never => false,
    }
}

pub fn build(p: &PromptSection, q: &Question, country: &Country, model: &Model) -> Result<Prompt> {
    let user = user_text(p, q, country);
    let text = if use_chat(p, model) {
        format!("{}{}", model.render_chat(&user)?, p.answer_cue)
    } else {
        format!("{user}\n{}", p.answer_cue)
    };
    Ok(Prompt {
        id: format!("{}-{}-{}", q.id, country.iso3, p.template_name),
        question_id: q.id.clone(),
        country: country.iso3.clone(),
        template: p.template_name.clone(),
        text,
        labels: (1..=q.options.len()).map(|i| i.to_string()).collect(),
        codes: q.options.iter().map(|o| o.code).collect(),
    })
}
