//! Option labels scored from a server's log-probabilities by the in-process rule
//! ([`crate::score`]): each label's variants "L" and " L", each the product of its tokens'
//! probabilities, a shorter label less what continues it into a longer one, renormalised over
//! the labels with the mass kept.
//!
//! - Echo (exact): one request per variant, `prompt + variant` with `echo` and `logprobs`; the
//!   variant's tokens are read off the echoed tokens after the prompt, as the server tokenized it.
//!   Where the server merges the variant with the prompt's last token ("Answer: " + " 1" reads
//!   "Answer:" "  " "1"), the in-process rule scores the variant's own token right after the
//!   prompt's tokens, which no text can make a server read: that one token is looked up in the
//!   next token's top k after the prompt instead (exact when it is there; otherwise it counts as
//!   unread, as below).
//! - Top-k: the local tokenizer gives each variant's tokens; one request per distinct context
//!   (the prompt, then the prompt and each variant's first tokens) reads the next token's top k.
//!   A token outside the top k contributes nothing, and at most the k-th probability: the sum of
//!   those bounds is kept per sample as `unread_mass`.
use super::Served;
use crate::recipe::LogprobMode;
use crate::score::{check_request, label_raw, label_sequences_with, label_variants, OptionScores, ScoreRequest};
use crate::util::error::{Error, Result};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

pub(super) fn score_all(m: &Served, items: &[ScoreRequest]) -> Result<Vec<OptionScores>> {
    for r in items {
        check_request(r)?;
    }
    in_flight(m.in_flight, items, |r| match m.mode {
        LogprobMode::Echo => score_echo(m, r),
        LogprobMode::TopK => score_top_k(m, r),
    })
}

/// `f` over `items` with up to `n` running at once; results in item order; the first error wins.
fn in_flight<T: Sync, R: Send>(n: usize, items: &[T], f: impl Fn(&T) -> Result<R> + Sync) -> Result<Vec<R>> {
    if n <= 1 || items.len() <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<Result<R>>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..n.min(items.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items.len() {
                    break;
                }
                let r = f(&items[i]);
                let failed = r.is_err();
                out.lock().expect("results")[i] = Some(r);
                if failed {
                    // Stop handing out work; the others finish what they hold.
                    next.store(items.len(), Ordering::Relaxed);
                }
            });
        }
    });
    let done = out.into_inner().expect("results");
    let mut res = Vec::with_capacity(items.len());
    let mut first_err = None;
    for r in done {
        match r {
            Some(Ok(v)) => res.push(v),
            Some(Err(e)) => {
                first_err.get_or_insert(e);
            }
            None => {}
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(res),
    }
}

fn no_logprobs(m: &Served, what: &str) -> Error {
    Error::Invalid(format!(
        "{}/completions: the answer has no {what}: the server does not return log-probabilities for this request (llama.cpp's server needs --logits_all true; vLLM and SGLang return them with echo; a server that offers only the next token's top k needs logprobs = \"top-k\")",
        m.client.base
    ))
}

/// Tokens and their log-probabilities echoed for `text`, and the text the server generated after it.
fn echoed(m: &Served, text: &str) -> Result<(Vec<String>, Vec<Option<f64>>, String)> {
    let c = m.completion(json!({
        "model": m.model_id,
        "prompt": text,
        "max_tokens": 1,
        "temperature": 0.0,
        "echo": true,
        "logprobs": 1,
    }))?;
    let lp = c.get("logprobs").filter(|l| !l.is_null()).ok_or_else(|| no_logprobs(m, "logprobs"))?;
    let tokens: Vec<String> = lp
        .get("tokens")
        .and_then(|t| t.as_array())
        .ok_or_else(|| no_logprobs(m, "logprobs.tokens"))?
        .iter()
        .map(|t| t.as_str().unwrap_or_default().to_string())
        .collect();
    let logps: Vec<Option<f64>> = lp
        .get("token_logprobs")
        .and_then(|t| t.as_array())
        .ok_or_else(|| no_logprobs(m, "logprobs.token_logprobs"))?
        .iter()
        .map(Value::as_f64)
        .collect();
    if tokens.len() != logps.len() {
        return Err(Error::Invalid(format!(
            "{}/completions: {} echoed tokens but {} log-probabilities",
            m.client.base,
            tokens.len(),
            logps.len()
        )));
    }
    let full = c.get("text").and_then(|t| t.as_str()).unwrap_or_default();
    // With echo the text is the prompt and then what was generated.
    let generated = full.strip_prefix(text).unwrap_or_default().to_string();
    Ok((tokens, logps, generated))
}

/// The echoed tokens that spell `variant` right before the generated text: walking back from
/// the end, first over the generated text, then over exactly the variant. `None` when a token
/// straddles the prompt's end (the variant merged with it).
fn variant_span(tokens: &[String], generated: &str, variant: &str) -> Option<std::ops::Range<usize>> {
    let mut end = tokens.len();
    let mut gen_len = 0;
    while gen_len < generated.len() && end > 0 {
        gen_len += tokens[end - 1].len();
        end -= 1;
    }
    if gen_len != generated.len() {
        return None;
    }
    let mut start = end;
    let mut len = 0;
    while len < variant.len() && start > 0 {
        len += tokens[start - 1].len();
        start -= 1;
    }
    let spelled: String = tokens[start..end].concat();
    (len == variant.len() && spelled == variant && start < end).then_some(start..end)
}

fn score_echo(m: &Served, r: &ScoreRequest) -> Result<OptionScores> {
    let mut seqs: Vec<Vec<Vec<String>>> = Vec::with_capacity(r.labels.len());
    let mut probs: Vec<Vec<f64>> = Vec::with_capacity(r.labels.len());
    let mut n_tokens = 0;
    let mut after_prompt: Option<HashMap<String, f64>> = None;
    let mut unread: Option<f64> = None;
    for label in &r.labels {
        let (mut ls, mut lp) = (Vec::new(), Vec::new());
        for v in label_variants(label) {
            let (tokens, logps, generated) = echoed(m, &format!("{}{v}", r.prompt))?;
            let (seq, p) = match variant_span(&tokens, &generated, &v) {
                Some(span) => {
                    let mut sum = 0.0;
                    for i in span.clone() {
                        sum += logps[i].ok_or_else(|| no_logprobs(m, "a log-probability for a prompt token"))?;
                    }
                    n_tokens = span.start;
                    (tokens[span].to_vec(), sum.exp())
                }
                None => {
                    // Merged with the prompt's end: the variant as one token after the prompt.
                    if after_prompt.is_none() {
                        after_prompt = Some(top_k(m, &r.prompt)?);
                    }
                    let top = after_prompt.as_ref().expect("read above");
                    match top.get(&v) {
                        Some(&x) => (vec![v.clone()], x.exp()),
                        None => {
                            *unread.get_or_insert(0.0) += floor(top).exp();
                            continue;
                        }
                    }
                }
            };
            if !ls.contains(&seq) {
                ls.push(seq);
                lp.push(p);
            }
        }
        seqs.push(ls);
        probs.push(lp);
    }
    Ok(finish(label_raw(&seqs, &probs), n_tokens, unread))
}

/// The smallest log-probability in a top-k list: a token outside it has at most this.
fn floor(top: &HashMap<String, f64>) -> f64 {
    let f = top.values().copied().fold(f64::INFINITY, f64::min);
    if f.is_finite() {
        f
    } else {
        0.0
    }
}

/// The next token's top-k log-probabilities after `text`, by token text.
fn top_k(m: &Served, text: &str) -> Result<HashMap<String, f64>> {
    let c = m.completion(json!({
        "model": m.model_id,
        "prompt": text,
        "max_tokens": 1,
        "temperature": 0.0,
        "logprobs": m.top_k,
    }))?;
    let top = c
        .get("logprobs")
        .and_then(|l| l.get("top_logprobs"))
        .and_then(|t| t.get(0))
        .and_then(|t| t.as_object())
        .ok_or_else(|| no_logprobs(m, "logprobs.top_logprobs"))?;
    Ok(top.iter().filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x))).collect())
}

fn score_top_k(m: &Served, r: &ScoreRequest) -> Result<OptionScores> {
    let tok = m.tok.as_ref().expect("top-k mode has a tokenizer (checked at connect)");
    let prompt_ids = tok.encode_prompt(&r.prompt)?;
    let seqs = label_sequences_with(tok, &r.prompt, &prompt_ids, &r.labels)?;
    let anchor = *prompt_ids.last().ok_or_else(|| Error::Invalid("empty prompt".into()))?;
    let anchor_text = tok.decode(&[anchor])?;
    // The text of token `t` as it reads after the prompt: decoded beside the prompt's last token
    // (a token decoded alone may lose its leading space).
    let piece = |t: u32| -> Result<String> {
        let both = tok.decode(&[anchor, t])?;
        Ok(both.strip_prefix(&anchor_text).unwrap_or(&both).to_string())
    };
    let mut tops: HashMap<Vec<u32>, HashMap<String, f64>> = HashMap::new();
    let mut unread = 0.0;
    let mut probs: Vec<Vec<f64>> = Vec::new();
    for label_seqs in &seqs {
        let mut lp = Vec::new();
        for s in label_seqs {
            let mut logp = 0.0f64;
            let mut read = true;
            for i in 0..s.len() {
                let ctx = s[..i].to_vec();
                if !tops.contains_key(&ctx) {
                    let mut text = r.prompt.clone();
                    for &t in &ctx {
                        text.push_str(&piece(t)?);
                    }
                    // The server reads text: a context whose text tokenizes otherwise (the label's
                    // tokens merged with the prompt's) cannot be asked for, and its label mass is
                    // unread. An empty top list stands for it.
                    let mut ids = prompt_ids.clone();
                    ids.extend_from_slice(&ctx);
                    let top = if tok.encode_prompt(&text)? == ids { top_k(m, &text)? } else { HashMap::new() };
                    tops.insert(ctx.clone(), top);
                }
                let top = &tops[&ctx];
                if top.is_empty() {
                    unread += logp.exp();
                    read = false;
                    break;
                }
                match top.get(&piece(s[i])?) {
                    Some(&x) => logp += x,
                    None => {
                        // Outside the top k: at most the k-th probability, times what led here.
                        unread += (logp + floor(top)).exp();
                        read = false;
                        break;
                    }
                }
            }
            lp.push(if read { logp.exp() } else { 0.0 });
        }
        probs.push(lp);
    }
    Ok(finish(label_raw(&seqs, &probs), prompt_ids.len(), Some(unread)))
}

fn finish(raw: Vec<f64>, n_tokens: usize, unread_mass: Option<f64>) -> OptionScores {
    let mass: f64 = raw.iter().sum();
    let probs = raw.iter().map(|r| if mass > 0.0 { r / mass } else { f64::NAN }).collect();
    OptionScores { raw, mass, probs, n_tokens, unread_mass }
}
