//! Training-mode blocks as single graph nodes ([`crate::model::kernels::block_ops`],
//! [`crate::model::kernels::attn_block`]): where a llama or gemma3 layer qualifies (CPU, f32
//! weights and biases, no prefix), its attention block and its gated MLP, each with the norm
//! before it, the optional norms inside and after it (Q/K norms, Gemma's post norms) and the
//! residual sum after it, run as one node each. Otherwise, and on a thread that turned them off
//! with [`set_fused_blocks`], the composed path applies.
use super::batch::{Batch, Kv};
use super::layers::{norm_rope, residual, AttnCtx, RmsNorm, RopeStyle};
use super::linear::Linear;
use crate::model::kernels::act::Gated;
use crate::model::kernels::attn_block::{AttnBlock, ExtraNorms};
use crate::model::kernels::block_ops::{GatedMlp, Proj, ProjLora};
use crate::model::kernels::{self};
use crate::model::mode::Mode;
use crate::util::error::Result;
use candle_core::quantized::QMatMul;
use candle_core::Tensor;
use std::cell::Cell;

thread_local! {
    static FUSED: Cell<bool> = const { Cell::new(true) };
}

/// Whether training on this thread builds the fused block nodes (the default) or the composed
/// graph they replace: the switch that lets tests compare the two.
#[doc(hidden)]
pub fn set_fused_blocks(on: bool) {
    FUSED.with(|f| f.set(on));
}

pub(crate) fn fused_blocks() -> bool {
    FUSED.with(|f| f.get())
}

/// A projection as a block part: None when its base is not a plain f32 CPU weight or its bias
/// not an f32 vector of its width. Its adapter's factors are appended to `params` (flattened) at
/// offset `at`.
fn proj(l: &Linear, x_elems: usize, mode: Mode, params: &mut Vec<Tensor>, at: &mut usize) -> Result<Option<Proj>> {
    let QMatMul::Tensor(w) = &l.base else { return Ok(None) };
    if !kernels::plain_cpu_f32(&[w]) {
        return Ok(None);
    }
    let out = w.dims2()?.0;
    let bias = match &l.bias {
        None => None,
        Some(b) if b.dims() == [out] && b.dtype() == candle_core::DType::F32 && !b.track_op() => {
            Some(b.to_vec1::<f32>()?)
        }
        Some(_) => return Ok(None),
    };
    let lora = match &l.lora {
        None => None,
        Some(lo) => {
            let (a, b) = (lo.a.as_tensor(), lo.b.as_tensor());
            let (r, _) = a.dims2()?;
            let a_at = *at;
            let b_at = a_at + a.elem_count();
            *at = b_at + b.elem_count();
            params.push(a.flatten_all()?);
            params.push(b.flatten_all()?);
            // The composed path's mask, value for value (same seed, layer id and count).
            let mask = match mode.dropout_seed {
                Some(seed) if lo.dropout > 0.0 => {
                    Some(crate::model::lora::dropout_values(seed, lo.id, x_elems, lo.dropout))
                }
                _ => None,
            };
            Some(ProjLora { a_at, b_at, r, scale: lo.scale as f32, mask })
        }
    };
    Ok(Some(Proj { w: w.clone(), packed: l.packed(w)?, bias, lora }))
}

/// A norm's weight and epsilon where it is an f32 vector of `width`.
fn norm_values(n: &RmsNorm, width: usize) -> Option<(Vec<f32>, f32)> {
    if n.weight.dims() != [width] || n.weight.dtype() != candle_core::DType::F32 {
        return None;
    }
    n.weight.to_vec1::<f32>().ok().map(|w| (w, n.eps))
}

/// An optional norm's values: Ok(None) without one, Err where it does not qualify.
fn optional_norm(n: Option<&RmsNorm>, width: usize) -> std::result::Result<Option<(Vec<f32>, f32)>, ()> {
    n.map(|n| norm_values(n, width).ok_or(())).transpose()
}

/// x + post(down(act(gate(norm(x))) * up(norm(x)))) as one training node (`post` the identity
/// when None), or None where the block does not qualify (then the caller composes it).
pub fn gated_mlp(
    x: &Tensor,
    norm: &RmsNorm,
    [gate, up, down]: [&Linear; 3],
    act: Gated,
    post: Option<&RmsNorm>,
    mode: Mode,
) -> Result<Option<Tensor>> {
    let any_lora = [gate, up, down].iter().any(|l| l.lora.is_some());
    if !mode.grad || !fused_blocks() || !(x.track_op() || any_lora) {
        return Ok(None);
    }
    let hidden = *x.dims().last().unwrap_or(&0);
    if !kernels::cpu_kernels(x.device()) || x.dtype() != candle_core::DType::F32 {
        return Ok(None);
    }
    let (Some((norm_w, eps)), Ok(post)) = (norm_values(norm, hidden), optional_norm(post, hidden)) else {
        return Ok(None);
    };
    let rows = x.elem_count() / hidden.max(1);
    let (mut params, mut at) = (Vec::new(), 0);
    let Some(g) = proj(gate, x.elem_count(), mode, &mut params, &mut at)? else { return Ok(None) };
    let Some(u) = proj(up, x.elem_count(), mode, &mut params, &mut at)? else { return Ok(None) };
    let inter = g.packed.n;
    let Some(d) = proj(down, rows * inter, mode, &mut params, &mut at)? else { return Ok(None) };
    if g.packed.k != hidden
        || u.packed.k != hidden
        || u.packed.n != inter
        || d.packed.k != inter
        || d.packed.n != hidden
    {
        return Ok(None);
    }
    let p = flat(params, x)?;
    let op = GatedMlp::new(norm_w, eps, [g, u, d], act, post);
    Ok(Some(x.contiguous()?.apply_op2(&p, op)?))
}

/// What a layer's attention block reads besides its weights: the batch (its padding), the
/// heads (query heads, KV heads, head dimension), the rotation tables [b, t, dim / 2], the pair
/// style, the sliding window, the score scale, and the optional norms: per-head Q and K norms
/// before the rotation and a norm of the block's output before the residual sum.
pub struct AttnParts<'a> {
    pub batch: &'a Batch,
    pub heads: (usize, usize, usize),
    pub rope: (&'a Tensor, &'a Tensor),
    pub style: RopeStyle,
    pub window: Option<usize>,
    pub scale: f64,
    pub qk_norm: Option<[&'a RmsNorm; 2]>,
    pub post: Option<&'a RmsNorm>,
}

/// x + post(o(attention(rope(qn(q(h))), rope(kn(k(h))), v(h)))), h = norm(x) (each optional
/// norm the identity when absent, each projection with its bias if it has one), as one training
/// node on a batch without a prefix; None where the block does not qualify (then the caller
/// composes it).
pub fn attention(x: &Tensor, norm: &RmsNorm, lins: [&Linear; 4], at: &AttnParts, mode: Mode) -> Result<Option<Tensor>> {
    let any_lora = lins.iter().any(|l| l.lora.is_some());
    if !mode.grad || !fused_blocks() || !(x.track_op() || any_lora) || at.batch.tree.is_some() || at.batch.offset != 0 {
        return Ok(None);
    }
    let (nh, nkv, hd) = at.heads;
    let (b, t) = (at.batch.rows, at.batch.len);
    let hidden = *x.dims().last().unwrap_or(&0);
    let ok = kernels::cpu_kernels(x.device())
        && x.dtype() == candle_core::DType::F32
        && x.elem_count() == b * t * hidden
        && hd % 2 == 0
        && nkv > 0
        && nh % nkv == 0
        && at.rope.0.dims() == [b, t, hd / 2]
        && at.rope.1.dims() == [b, t, hd / 2];
    if !ok {
        return Ok(None);
    }
    let (Some((norm_w, eps)), Ok(q_norm), Ok(k_norm), Ok(post)) = (
        norm_values(norm, hidden),
        optional_norm(at.qk_norm.map(|[q, _]| q), hd),
        optional_norm(at.qk_norm.map(|[_, k]| k), hd),
        optional_norm(at.post, hidden),
    ) else {
        return Ok(None);
    };
    let qk = q_norm.zip(k_norm).map(|(q, k)| [q, k]);
    let (mut params, mut pos) = (Vec::new(), 0);
    let mut proj_of = |l: &Linear, elems: usize| proj(l, elems, mode, &mut params, &mut pos);
    let (Some(q), Some(k), Some(v), Some(o)) = (
        proj_of(lins[0], b * t * hidden)?,
        proj_of(lins[1], b * t * hidden)?,
        proj_of(lins[2], b * t * hidden)?,
        proj_of(lins[3], b * t * nh * hd)?,
    ) else {
        return Ok(None);
    };
    let tables = (at.rope.0.flatten_all()?.to_vec1::<f32>()?, at.rope.1.flatten_all()?.to_vec1::<f32>()?);
    let shape = kernels::AttnShape {
        rows: b,
        heads: nh,
        kv_heads: nkv,
        len: t,
        dim: hd,
        prefix: vec![0; b],
        pad: at.batch.pad.clone(),
        window: at.window,
        scale: at.scale as f32,
    };
    let p = flat(params, x)?;
    let extra = ExtraNorms { qk, post };
    let op = AttnBlock::new(norm_w, eps, [q, k, v, o], shape, tables, at.style == RopeStyle::Interleaved, extra);
    Ok(Some(x.contiguous()?.apply_op2(&p, op)?))
}

/// The block [`attention`] computes, from composed ops: for what the node does not take (a
/// prefix, keys and values to record, other devices, inference) and as the reference it is
/// tested against. `(ctx, layer)`: the batch's attention context and the layer's index in it;
/// `(kv, record)`: where the layer's keys and values go when recorded.
pub fn attention_composed(
    x: &Tensor,
    norm: &RmsNorm,
    [q, k, v, o]: [&Linear; 4],
    at: &AttnParts,
    (ctx, layer): (&AttnCtx, usize),
    (kv, record): (&mut Kv, bool),
    mode: Mode,
) -> Result<Tensor> {
    let ((nh, nkv, hd), (b, t), (cos, sin)) = (at.heads, (at.batch.rows, at.batch.len), at.rope);
    let h = norm.forward(x, mode)?;
    let [q, k, v] = Linear::forward_many([q, k, v], &h, mode)?;
    let [qn, kn] = at.qk_norm.map_or([None, None], |[q, k]| [Some(q), Some(k)]);
    let q = norm_rope(&q, (b, t, nh, hd), qn, cos, sin, at.style, mode)?;
    let k = norm_rope(&k, (b, t, nkv, hd), kn, cos, sin, at.style, mode)?;
    let v = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?;
    if record {
        kv.k.push(k.clone());
        kv.v.push(v.clone());
    }
    let a = ctx.attend(layer, &q, &k, &v, at.window, at.scale)?;
    let out = o.forward(&a, mode)?;
    let out = match at.post {
        Some(n) => n.forward(&out, mode)?,
        None => out,
    };
    residual(x, &out, mode)
}

/// The adapters' flattened factors as one tensor (one unused element when there are none).
fn flat(params: Vec<Tensor>, like: &Tensor) -> Result<Tensor> {
    Ok(if params.is_empty() {
        Tensor::zeros(1, candle_core::DType::F32, like.device())?
    } else {
        Tensor::cat(&params, 0)?
    })
}
