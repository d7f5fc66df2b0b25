//! One multiple-choice prompt per (question, country persona, template, option order). Options
//! are labelled 1..K in the order shown; `order` says which original option each label stands
//! for, so scores can be mapped back to the question's codes.
use crate::lm::Lm;
use crate::recipe::{ChatMode, OrderMode, PromptSection};
use crate::survey::{Country, Question};
use crate::util::error::Result;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Prompt {
    pub id: String,
    pub question_id: String,
    /// ISO3 of the persona; empty for a country-blind prompt.
    pub country: String,
    pub template: String,
    /// The exact string given to the tokenizer.
    pub text: String,
    /// Labels in the order shown.
    pub labels: Vec<String>,
    /// `order[pos]` is the index (in the question's option order) of the option shown at `pos`.
    pub order: Vec<usize>,
}

/// A named display order of a question's options.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    /// "" for the questionnaire's order (prompt ids stay as they were before order control).
    pub name: String,
    pub perm: Vec<usize>,
}

/// The display orders a recipe asks for, for a question with `k` options; the original first.
/// Cyclic shifts put every option in every position once, which cancels a pure position
/// preference; the reversal also breaks "next to" effects the shifts keep.
pub fn orders(mode: OrderMode, k: usize, cyclic_max: usize) -> Vec<Order> {
    let original: Vec<usize> = (0..k).collect();
    let mut out = vec![Order { name: String::new(), perm: original.clone() }];
    if mode == OrderMode::Original || k < 2 {
        return out;
    }
    if mode == OrderMode::Cyclic && k <= cyclic_max {
        for s in 1..k {
            out.push(Order { name: format!("shift{s}"), perm: (0..k).map(|p| (p + s) % k).collect() });
        }
    }
    let reversed: Vec<usize> = (0..k).rev().collect();
    if !out.iter().any(|o| o.perm == reversed) {
        out.push(Order { name: "rev".into(), perm: reversed });
    }
    out
}

/// Probabilities over shown positions mapped back to the question's option order.
pub fn to_original(order: &[usize], by_position: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; order.len()];
    for (pos, &i) in order.iter().enumerate() {
        out[i] = by_position[pos];
    }
    out
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

/// Whether prompts of this section go through the model's chat template: the one chat setting,
/// read by the probe, the teacher and the student's training examples alike.
pub fn use_chat(p: &PromptSection, model: &dyn Lm) -> bool {
    match p.chat {
        ChatMode::Auto => model.is_chat(),
        ChatMode::Always => true,
        ChatMode::Never => false,
    }
}

/// The text a model reads before its answer: the user turn (wrapped in the model's chat template,
/// with the generation prompt, when `chat`; else followed by a newline) and then the answer cue.
/// The one place a prompt is rendered: the probe's prompts, the teacher's soft-label prompts and
/// the student's training contexts all come from here, so training and evaluation read the same.
pub fn render(model: &dyn Lm, user: &str, cue: &str, chat: bool) -> Result<String> {
    Ok(if chat { format!("{}{cue}", model.render_chat(user)?) } else { format!("{user}\n{cue}") })
}

/// The prompt for a question in the questionnaire's order.
pub fn build(p: &PromptSection, q: &Question, country: &Country, model: &dyn Lm) -> Result<Prompt> {
    build_ordered(p, q, Some(country), &orders(OrderMode::Original, q.options.len(), 0)[0], model)
}

/// The prompt for a question with its options shown in `order`; `country: None` for a
/// country-blind template.
pub fn build_ordered(
    p: &PromptSection,
    q: &Question,
    country: Option<&Country>,
    order: &Order,
    model: &dyn Lm,
) -> Result<Prompt> {
    let options: Vec<String> = order.perm.iter().map(|&i| q.options[i].label.clone()).collect();
    let user = user_text_raw(p, country.map(|c| c.name.as_str()).unwrap_or(""), &q.text, &options);
    let text = render(model, &user, &p.answer_cue, use_chat(p, model))?;
    Ok(Prompt {
        id: prompt_id(&q.id, country.map(|c| c.iso3.as_str()), &p.template_name, &order.name),
        question_id: q.id.clone(),
        country: country.map(|c| c.iso3.clone()).unwrap_or_default(),
        template: p.template_name.clone(),
        text,
        labels: (1..=q.options.len()).map(|i| i.to_string()).collect(),
        order: order.perm.clone(),
    })
}

/// `Q1-USA-persona`, `Q1-USA-persona~rev`, `Q1-*-blind`.
pub fn prompt_id(question: &str, country: Option<&str>, template: &str, order: &str) -> String {
    let mut id = format!("{question}-{}-{template}", country.unwrap_or("*"));
    if !order.is_empty() {
        id.push('~');
        id.push_str(order);
    }
    id
}
