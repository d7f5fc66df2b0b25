//! Records -> token rows and the positions whose next-token distributions carry the loss.
use crate::generate::dataset::{Lesson, Record};
use crate::model::Model;
use crate::score::{Plan, ScoreRequest};
use crate::util::error::Result;
use candle_core::{Tensor, D};

#[derive(Debug, Clone)]
pub struct Example {
    pub id: String,
    /// The survey question the record was made from, if any (steps grouped by question).
    pub question: Option<String>,
    /// The question's wording in the record (the survey's or a paraphrase; steps by wording).
    pub wording: Option<String>,
    pub rows: Vec<Vec<u32>>,
    /// (row, position) pairs whose next-token logits the loss reads.
    pub reads: Vec<(usize, usize)>,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub enum Kind {
    /// Next-token targets, one per read.
    Tokens(Vec<u32>),
    Labels(LabelLoss),
}

/// Option-label probabilities computed exactly as the probe scores them (both "k" and " k",
/// multi-token labels, shorter labels excluding their continuations), so training moves the
/// quantity that evaluation measures.
#[derive(Debug, Clone)]
pub struct LabelLoss {
    /// Per sequence (flattened over labels): its (read, token) steps.
    pub seqs: Vec<Vec<(usize, u32)>>,
    /// Per sequence: the label it belongs to.
    pub label_of: Vec<usize>,
    /// Per sequence: the sequences that continue it (another label's tokens).
    pub longer: Vec<Vec<usize>>,
    pub target: Vec<f64>,
}

impl LabelLoss {
    /// The target distribution's expected answer on the label-index scale 0..1 (the scale of
    /// the student's expected answers in [`batch_loss_parts`]).
    pub fn target_expected(&self) -> f64 {
        label_scale(self.target.len()).iter().zip(&self.target).map(|(s, p)| s * p).sum()
    }
}

impl Example {
    pub fn n_tokens(&self) -> usize {
        self.rows.iter().map(|r| r.len()).sum()
    }
    /// How much this example weighs in its loss's denominator.
    pub fn weight(&self) -> usize {
        match &self.kind {
            Kind::Tokens(t) => t.len(),
            Kind::Labels(_) => 1,
        }
    }
}

// Built once per record and unwrapped at once: boxing the common case would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Built {
    Ok(Example),
    /// The prompt alone is longer than `max_len`.
    TooLong,
}

pub fn build(model: &Model, rec: &Record, lesson: &Lesson, chat: bool, max_len: usize) -> Result<Built> {
    let prefix = rec.answer_prefix.as_deref().unwrap_or("");
    match lesson {
        Lesson::Text { user, answer } => {
            let ctx = model.tok.encode_prompt(&crate::prompt::render(model, user, prefix, chat)?)?;
            let mut ans = model.tok.encode(answer)?;
            if let Some((eos, _)) = &model.tok.eos {
                ans.push(*eos);
            }
            if ctx.len() + 1 > max_len {
                return Ok(Built::TooLong);
            }
            ans.truncate(max_len - ctx.len());
            let start = ctx.len();
            let mut row = ctx;
            row.extend_from_slice(&ans);
            let reads = (0..ans.len()).map(|i| (0, start - 1 + i)).collect();
            Ok(Built::Ok(Example {
                id: rec.id.clone(),
                question: rec.question_id.clone(),
                wording: rec.question.clone(),
                rows: vec![row],
                reads,
                kind: Kind::Tokens(ans),
            }))
        }
        Lesson::Labels { user, labels, target } => {
            let prompt = crate::prompt::render(model, user, prefix, chat)?;
            let plan = Plan::new(model, &ScoreRequest { prompt, labels: labels.clone() })?;
            let (rows, reads, map) = plan.layout();
            if rows.iter().any(|r| r.len() > max_len) {
                return Ok(Built::TooLong);
            }
            let mut seqs = Vec::new();
            let mut label_of = Vec::new();
            for (k, variants) in plan.seqs.iter().enumerate() {
                for s in variants {
                    seqs.push((0..s.len()).map(|i| (map[&s[..i].to_vec()], s[i])).collect());
                    label_of.push(k);
                }
            }
            let kind = Kind::Labels(LabelLoss { seqs, label_of, longer: plan.longer(), target: target.clone() });
            Ok(Built::Ok(Example {
                id: rec.id.clone(),
                question: rec.question_id.clone(),
                wording: rec.question.clone(),
                rows,
                reads,
                kind,
            }))
        }
    }
}

/// A step's raw loss sums, added one token (NLL) or one example (KL) at a time in example order:
/// each term is computed row by row, so the sums, and the loss reported for a step, do not depend
/// on how the step is cut into micro-batches.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct LossSums {
    /// Token NLL summed over answer tokens (Tokens examples).
    pub lm: f64,
    /// KL(target || model) summed over examples (Labels examples).
    pub kl: f64,
}

impl LossSums {
    /// Each sum divided by its denominator, added.
    pub fn loss(&self, denom: (f64, f64)) -> f64 {
        self.lm / denom.0 + self.kl / denom.1
    }
}

/// Loss of a micro-batch over its examples, each part divided by its denominator, as a tensor
/// to backpropagate; the raw terms are added to `sums`.
pub fn batch_loss(
    model: &Model,
    batch: &[&Example],
    mode: crate::model::mode::Mode,
    denom: (f64, f64),
    sums: &mut LossSums,
) -> Result<Tensor> {
    Ok(batch_loss_parts(model, batch, mode, denom, sums, false)?.0)
}

/// [`batch_loss`], plus (when `with_expected`; otherwise empty) each label example's expected
/// answer under the student (a scalar tensor in the graph, on the label-index scale 0..1:
/// sum_k q_k k / (K - 1)), in batch order.
pub fn batch_loss_parts(
    model: &Model,
    batch: &[&Example],
    mode: crate::model::mode::Mode,
    denom: (f64, f64),
    sums: &mut LossSums,
    with_expected: bool,
) -> Result<(Tensor, Vec<Tensor>)> {
    let _kernels = model.kernel_scope();
    // Token reads first, label reads after, so each part is a contiguous block of logits.
    let (mut rows, mut tok_reads, mut targets, mut lab_reads) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut lab_r0 = Vec::new();
    for ex in batch {
        let row0 = rows.len();
        rows.extend(ex.rows.iter().cloned());
        let reads = ex.reads.iter().map(|&(r, p)| (row0 + r, p));
        match &ex.kind {
            Kind::Tokens(t) => {
                tok_reads.extend(reads);
                targets.extend_from_slice(t);
            }
            Kind::Labels(_) => {
                lab_r0.push(lab_reads.len());
                lab_reads.extend(reads);
            }
        }
    }
    let n_tok = tok_reads.len();
    let all: Vec<(usize, usize)> = tok_reads.into_iter().chain(lab_reads.iter().copied()).collect();
    // Token reads alone: the head and the cross-entropy as one node where the model allows it.
    let fused =
        if lab_reads.is_empty() && n_tok > 0 { model.token_nll_rows(&rows, &all, &targets, mode)? } else { None };
    let logits = match fused {
        Some(_) => None,
        None => Some(model.logits_rows(&rows, &all, mode)?),
    };
    let dev = &model.device;
    let mut total = Tensor::zeros((), candle_core::DType::F32, dev)?;
    let mut expected = Vec::new();
    if n_tok > 0 {
        let nll = match (fused, &logits) {
            (Some(nll), _) => nll,
            (None, Some(l)) => super::loss::nll_rows(&l.narrow(0, 0, n_tok)?, &targets)?,
            (None, None) => unreachable!("logits computed without the fused loss"),
        };
        for x in nll.to_vec1::<f32>()? {
            sums.lm += x as f64;
        }
        total = (total + (nll.sum_all()? / denom.0)?)?;
    }
    if let (false, Some(logits)) = (lab_reads.is_empty(), &logits) {
        let lab = logits.narrow(0, n_tok, lab_reads.len())?;
        let vocab = lab.dim(D::Minus1)?;
        let logp = candle_nn::ops::log_softmax(&lab, D::Minus1)?.flatten_all()?;
        let pick = |idx: Vec<u32>| -> Result<Tensor> {
            let n = idx.len();
            Ok(logp.index_select(&Tensor::from_vec(idx, n, dev)?, 0)?)
        };
        let labels = batch.iter().filter_map(|ex| match &ex.kind {
            Kind::Labels(l) => Some(l),
            Kind::Tokens(_) => None,
        });
        for (l, &r0) in labels.zip(&lab_r0) {
            let (kl, logq) = label_kl(l, r0, vocab, &pick)?;
            sums.kl += kl.to_scalar::<f32>()? as f64;
            total = (total + (kl / denom.1)?)?;
            if with_expected {
                let scale: Vec<f32> = label_scale(logq.dim(0)?).into_iter().map(|x| x as f32).collect();
                expected.push((logq.exp()? * Tensor::from_vec(scale, logq.dim(0)?, dev)?)?.sum_all()?);
            }
        }
    }
    Ok((total, expected))
}

/// The label-index scale 0..1 of `k` labels (the first label 0, the last 1).
pub fn label_scale(k: usize) -> Vec<f64> {
    (0..k).map(|i| if k > 1 { i as f64 / (k - 1) as f64 } else { 0.0 }).collect()
}

/// KL(target || student) over the labels, and the student's log-probabilities of the labels.
fn label_kl(
    l: &LabelLoss,
    r0: usize,
    vocab: usize,
    pick: &dyn Fn(Vec<u32>) -> Result<Tensor>,
) -> Result<(Tensor, Tensor)> {
    let (n_seq, n_lab) = (l.seqs.len(), l.target.len());
    let mut idx = Vec::new();
    let mut owner = Vec::new(); // step -> sequence
    for (s, steps) in l.seqs.iter().enumerate() {
        for &(read, tok) in steps {
            idx.push(((r0 + read) * vocab + tok as usize) as u32);
            owner.push(s);
        }
    }
    let n_steps = idx.len();
    let g = pick(idx)?; // [n_steps] log-probs
    let dev = g.device();
    // Sequence log-prob = sum of its steps; then exclusion of longer continuations; then label sums.
    let mut sum_m = vec![0f32; n_seq * n_steps];
    for (j, &s) in owner.iter().enumerate() {
        sum_m[s * n_steps + j] = 1.0;
    }
    let sum_m = Tensor::from_vec(sum_m, (n_seq, n_steps), dev)?;
    let p_seq = sum_m.matmul(&g.unsqueeze(1)?)?.exp()?; // [n_seq, 1]
    let mut excl = vec![0f32; n_seq * n_seq];
    for (s, longer) in l.longer.iter().enumerate() {
        excl[s * n_seq + s] = 1.0;
        for &t in longer {
            excl[s * n_seq + t] -= 1.0;
        }
    }
    let own = Tensor::from_vec(excl, (n_seq, n_seq), dev)?.matmul(&p_seq)?.relu()?;
    let mut lab_m = vec![0f32; n_lab * n_seq];
    for (s, &k) in l.label_of.iter().enumerate() {
        lab_m[k * n_seq + s] = 1.0;
    }
    let raw = (Tensor::from_vec(lab_m, (n_lab, n_seq), dev)?.matmul(&own)?.squeeze(1)? + 1e-12)?;
    let logq = (raw.log()? - raw.sum_all()?.log()?.broadcast_as(n_lab)?)?;
    let t: Vec<f32> = l.target.iter().map(|&p| p as f32).collect();
    let ent: f32 = t.iter().filter(|&&p| p > 0.0).map(|&p| p * p.ln()).sum();
    let t = Tensor::from_vec(t, n_lab, dev)?;
    Ok((((t * &logq)?.sum_all()?.neg()? + ent as f64)?, logq))
}
