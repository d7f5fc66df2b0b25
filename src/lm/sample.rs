//! Autoregressive decoding with a KV cache and seeded sampling (temperature, top-k, top-p,
//! repetition penalty, stop strings). One RNG per record, seeded from (run seed, record id), so
//! any record can be regenerated alone and batch or shard layout never changes a record.
use super::Generated;
use crate::model::Model;
pub use crate::recipe::generate::Sampling;
use crate::util::error::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The RNG for one record.
pub fn record_rng(seed: u64, id: &str) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(crate::util::seed::from_text(&format!("{seed}\u{1f}{id}")))
}

/// Pick the next token from `logits` given the tokens seen so far.
pub fn pick(logits: &[f32], seen: &[u32], s: &Sampling, rng: &mut ChaCha8Rng) -> u32 {
    let mut l: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
    if s.repetition_penalty != 1.0 {
        let mut uniq = seen.to_vec();
        uniq.sort_unstable();
        uniq.dedup();
        for t in uniq {
            let x = &mut l[t as usize];
            *x = if *x > 0.0 { *x / s.repetition_penalty } else { *x * s.repetition_penalty };
        }
    }
    if s.temperature <= 0.0 {
        return argmax(&l);
    }
    let mut idx: Vec<usize> = (0..l.len()).collect();
    // Ties broken by token id so the order never depends on the sort's internals.
    let order = |a: &usize, b: &usize| l[*b].total_cmp(&l[*a]).then(a.cmp(b));
    if s.top_k > 0 && s.top_k < idx.len() {
        // Partial selection first: a full sort of Gemma's 262k logits per token costs more
        // than the rest of sampling.
        idx.select_nth_unstable_by(s.top_k - 1, order);
        idx.truncate(s.top_k);
    }
    idx.sort_unstable_by(order);
    let m = l[idx[0]];
    let mut p: Vec<f64> = idx.iter().map(|&i| ((l[i] - m) / s.temperature).exp()).collect();
    let z: f64 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= z);
    if s.top_p < 1.0 {
        let (mut acc, mut keep) = (0.0, 0);
        for &x in &p {
            acc += x;
            keep += 1;
            if acc >= s.top_p {
                break;
            }
        }
        idx.truncate(keep);
        p.truncate(keep);
        let z: f64 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= z);
    }
    let u: f64 = rng.random();
    let mut acc = 0.0;
    for (i, &x) in p.iter().enumerate() {
        acc += x;
        if u < acc {
            return idx[i] as u32;
        }
    }
    idx[p.len() - 1] as u32
}

fn argmax(l: &[f64]) -> u32 {
    let mut best = 0;
    for (i, &x) in l.iter().enumerate() {
        if x > l[best] {
            best = i;
        }
    }
    best as u32
}

/// Continue `prompt` (the exact text given to the tokenizer).
pub fn generate(model: &Model, prompt: &str, s: &Sampling, rng: &mut ChaCha8Rng) -> Result<Generated> {
    let ids = model.tok.encode_prompt(prompt)?;
    let (mut logits, mut kv) = model.prefill(&ids)?;
    let mut seen = ids.clone();
    let mut out: Vec<u32> = Vec::new();
    let eos = model.tok.eos.as_ref().map(|e| e.0);
    let mut text = String::new();
    for _ in 0..s.max_new_tokens {
        let l: Vec<f32> = logits.to_vec1()?;
        let t = pick(&l, &seen, s, rng);
        if Some(t) == eos {
            return Ok(Generated { text, n_tokens: out.len(), finish: "eos" });
        }
        out.push(t);
        seen.push(t);
        text = model.tok.decode(&out)?;
        if let Some(cut) = s.stop.iter().filter_map(|st| text.find(st.as_str())).min() {
            text.truncate(cut);
            return Ok(Generated { text, n_tokens: out.len(), finish: "stop" });
        }
        logits = model.decode(&mut kv, t)?;
    }
    Ok(Generated { text, n_tokens: out.len(), finish: "length" })
}
