//! Batch-invariant attention for the forward pass (inference, and training through
//! `attn_backward::AttnOp`).
//!
//! A prompt's probabilities must not depend on what else is in its batch, how the batch is padded
//! or whether a shared prefix was run as a separate forward. Scores and softmax once ran over each
//! row's padded key range; candle's softmax sums with SIMD lanes anchored at the start of the
//! padded row, so the left padding moved every real key to another lane. [`attend`] reads each
//! query's visible keys in absolute-position order, shared prefix first, never touching padding,
//! with one fixed summation pattern ([`super::sums`]). A radix tree of prefixes runs in one pass
//! with the same arithmetic ([`attend_tree`]).
//!
//! The tests in this file pin that bit for bit; `tests/it/batch.rs` pins the model.
use super::sums::{softmax_weights_heads, weighted_sum_heads, HEADS_TOGETHER};
use rayon::prelude::*;

/// Shape of one attention call. Queries q [rows, heads, len, dim]; the batch's own keys and
/// values k, v [rows, kv_heads, len, dim], left-padded by `pad[row]`; each row continues a prefix
/// of `prefix[row]` tokens whose keys and values [kv_heads, prefix[row], dim] are given apart
/// (one prefix shared by every row, or each row its own).
#[derive(Debug, Clone)]
pub struct AttnShape {
    pub rows: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub len: usize,
    pub dim: usize,
    pub prefix: Vec<usize>,
    pub pad: Vec<usize>,
    /// Sliding window: a query sees keys at most `window - 1` positions back.
    pub window: Option<usize>,
    pub scale: f32,
}

/// Runs of up to [`HEADS_TOGETHER`] query heads of one KV group: (first head, heads).
fn head_runs(heads: usize, kv_heads: usize) -> Vec<(usize, usize)> {
    let group = heads / kv_heads;
    let mut runs = Vec::with_capacity(heads);
    for g in 0..kv_heads {
        let mut c = 0;
        while c < group {
            let m = HEADS_TOGETHER.min(group - c);
            runs.push((g * group + c, m));
            c += m;
        }
    }
    runs
}

/// One query position for a run of `w.len()` heads (at most [`HEADS_TOGETHER`]; head j's query
/// is `q(j)`) over the keys `lo..=qa`: softmax weights into `w`, the weighted values added to
/// head j's output at `o[j * stride + at]`.
#[allow(clippy::too_many_arguments)]
#[inline]
fn attend_heads<'k>(
    q: impl Fn(usize) -> &'k [f32],
    lo: usize,
    qa: usize,
    scale: f32,
    key: impl Fn(usize) -> &'k [f32],
    value: impl Fn(usize) -> &'k [f32],
    w: &mut [Vec<f32>],
    o: &mut [f32],
    (stride, at, d): (usize, usize, usize),
) {
    macro_rules! heads {
        ($hn:literal) => {{
            softmax_weights_heads::<$hn>(std::array::from_fn(q), lo, qa, scale, key, w);
            weighted_sum_heads::<$hn>(o, stride, at, d, w, lo, value);
        }};
    }
    match w.len() {
        1 => heads!(1),
        2 => heads!(2),
        3 => heads!(3),
        4 => heads!(4),
        n => unreachable!("attention: {n} heads in one run"),
    }
}

/// One row's prefix keys and values, [kv_heads, prefix, dim] each (empty without a prefix).
pub type PrefixKv<'a> = (&'a [f32], &'a [f32]);

/// Causal softmax attention, returned as [rows, len, heads * dim]. Each real query attends to
/// absolute positions max(0, q - window + 1)..=q in that order; padding queries give zeros. One
/// task per row and run of heads sharing a KV head ([`attend_heads`]); each head's numbers are
/// those of `softmax_weights` and `weighted_sum` run for it alone (tested).
/// `pre[row]`: the row's prefix keys and values (may be empty when no row has a prefix).
pub fn attend(s: &AttnShape, q: &[f32], k: &[f32], v: &[f32], pre: &[PrefixKv]) -> Vec<f32> {
    let (t, d, h) = (s.len, s.dim, s.heads);
    let group = h / s.kv_heads;
    let runs = head_runs(h, s.kv_heads);
    let tasks: Vec<(usize, usize, usize)> =
        (0..s.rows).flat_map(|r| runs.iter().map(move |&(h0, hc)| (r, h0, hc))).collect();
    let parts: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(r, h0, hc)| {
            let g = h0 / group;
            let (pad, p) = (s.pad[r], s.prefix[r]);
            let own = (r * s.kv_heads + g) * t * d;
            let (ks, vs) = (&k[own..][..t * d], &v[own..][..t * d]);
            let (pks, pvs): (&[f32], &[f32]) =
                if p > 0 { (&pre[r].0[g * p * d..][..p * d], &pre[r].1[g * p * d..][..p * d]) } else { (&[], &[]) };
            // Absolute key position a: row a of the prefix, or row pad + a - p of this row's own.
            let key = |a: usize| if a < p { &pks[a * d..(a + 1) * d] } else { &ks[(pad + a - p) * d..][..d] };
            let value = |a: usize| if a < p { &pvs[a * d..(a + 1) * d] } else { &vs[(pad + a - p) * d..][..d] };
            // Head j's output for query i at o[(j * t + i) * d].
            let mut o = vec![0f32; hc * t * d];
            let mut w: Vec<Vec<f32>> = (0..hc).map(|_| Vec::with_capacity(p + t)).collect();
            for i in pad..t {
                let qa = p + i - pad;
                let lo = s.window.map_or(0, |win| (qa + 1).saturating_sub(win));
                let qj = |j: usize| &q[((r * h + h0 + j) * t + i) * d..][..d];
                attend_heads(qj, lo, qa, s.scale, key, value, &mut w, &mut o, (t * d, i * d, d));
            }
            o
        })
        .collect();
    let mut out = vec![0f32; s.rows * t * h * d];
    for (&(r, h0, hc), o) in tasks.iter().zip(parts) {
        for j in 0..hc {
            for i in 0..t {
                out[((r * t + i) * h + h0 + j) * d..][..d].copy_from_slice(&o[(j * t + i) * d..][..d]);
            }
        }
    }
    out
}

/// Where a run of keys lives: this batch's own keys (flat token index) or an external prefix
/// (its index in the list given to [`attend_tree`]; row index inside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Own,
    Ext(usize),
}

/// One node of a radix tree run as part of a single flat row ([`attend_tree`]): `len` tokens at
/// flat indices `start..`, absolute positions `pos..`; the keys before `pos` are the runs in
/// `before` (source, first row in it, count), which cover positions 0..pos in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeNode {
    pub start: usize,
    pub len: usize,
    pub pos: usize,
    pub before: Vec<(KeySource, usize, usize)>,
}

/// [`attend`] for a whole radix tree in one pass. q [1, heads, n, dim] and the own keys and
/// values k, v [1, kv_heads, n, dim] hold every node's tokens back to back (no padding); a
/// node's queries attend to its path's keys, which come from earlier nodes of the same row or
/// from external prefixes `ext` ([kv_heads, len, dim] each). Keys are read in absolute-position
/// order with [`attend`]'s arithmetic, so every query gets the bits it would get in its whole
/// row. Returns [n, heads * dim].
pub fn attend_tree(s: &AttnShape, q: &[f32], k: &[f32], v: &[f32], ext: &[PrefixKv], nodes: &[TreeNode]) -> Vec<f32> {
    let (n, d, h) = (s.len, s.dim, s.heads);
    let group = h / s.kv_heads;
    // One task per node and run of heads sharing a KV head: (node, first head, heads).
    let runs = head_runs(h, s.kv_heads);
    let tasks: Vec<(usize, usize, usize)> =
        (0..nodes.len()).flat_map(|ni| runs.iter().map(move |&(h0, hc)| (ni, h0, hc))).collect();
    let parts: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(ni, h0, hc)| {
            let node = &nodes[ni];
            let g = h0 / group;
            // Every key and value row of the node's path, by absolute position.
            let total = node.pos + node.len;
            let (mut keys, mut values): (Vec<&[f32]>, Vec<&[f32]>) =
                (Vec::with_capacity(total), Vec::with_capacity(total));
            let mut push = |src: KeySource, first: usize, count: usize| {
                let (ks, vs, rows) = match src {
                    KeySource::Own => (k, v, n),
                    KeySource::Ext(i) => (ext[i].0, ext[i].1, ext[i].0.len() / (s.kv_heads * d)),
                };
                for a in first..first + count {
                    keys.push(&ks[(g * rows + a) * d..][..d]);
                    values.push(&vs[(g * rows + a) * d..][..d]);
                }
            };
            for &(src, first, count) in &node.before {
                push(src, first, count);
            }
            push(KeySource::Own, node.start, node.len);
            // Head j's output for the node's query i at o[(j * len + i) * d].
            let mut o = vec![0f32; hc * node.len * d];
            let mut w: Vec<Vec<f32>> = (0..hc).map(|_| Vec::with_capacity(total)).collect();
            let stride = node.len * d;
            for i in 0..node.len {
                let qa = node.pos + i;
                let lo = s.window.map_or(0, |win| (qa + 1).saturating_sub(win));
                let qj = |j: usize| &q[((h0 + j) * n + node.start + i) * d..][..d];
                let (key, value) = (|a: usize| keys[a], |a: usize| values[a]);
                attend_heads(qj, lo, qa, s.scale, key, value, &mut w, &mut o, (stride, i * d, d));
            }
            o
        })
        .collect();
    let mut out = vec![0f32; n * h * d];
    for (&(ni, h0, hc), o) in tasks.iter().zip(parts) {
        let node = &nodes[ni];
        for j in 0..hc {
            for i in 0..node.len {
                out[((node.start + i) * h + h0 + j) * d..][..d].copy_from_slice(&o[(j * node.len + i) * d..][..d]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::sums::{softmax_weights, weighted_sum};
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rand_vec(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// One unpadded row of `t` positions without a prefix, scale 0.3.
    fn one_row((h, kv, t, d): (usize, usize, usize, usize), win: Option<usize>) -> AttnShape {
        AttnShape {
            rows: 1,
            heads: h,
            kv_heads: kv,
            len: t,
            dim: d,
            prefix: vec![0],
            pad: vec![0],
            window: win,
            scale: 0.3,
        }
    }

    /// One row's attention, computed alone with no padding and no prefix.
    fn single(qkv: [&[f32]; 3], dims: (usize, usize, usize, usize), win: Option<usize>) -> Vec<f32> {
        attend_per_head(&one_row(dims, win), qkv[0], qkv[1], qkv[2])
    }

    /// The reference: [`attend`] one head at a time with [`softmax_weights`] and
    /// [`weighted_sum`] (no prefix), as it ran before heads were grouped.
    fn attend_per_head(s: &AttnShape, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let (t, d, h) = (s.len, s.dim, s.heads);
        let group = h / s.kv_heads;
        let mut out = vec![0f32; s.rows * t * h * d];
        for r in 0..s.rows {
            for hh in 0..h {
                let own = (r * s.kv_heads + hh / group) * t * d;
                let (ks, vs, pad) = (&k[own..][..t * d], &v[own..][..t * d], s.pad[r]);
                let mut w = Vec::new();
                for i in pad..t {
                    let qa = i - pad;
                    let lo = s.window.map_or(0, |win| (qa + 1).saturating_sub(win));
                    let qi = &q[((r * h + hh) * t + i) * d..][..d];
                    softmax_weights(qi, lo, qa, s.scale, |a| &ks[(pad + a) * d..][..d], &mut w);
                    let o = &mut out[((r * t + i) * h + hh) * d..][..d];
                    weighted_sum(o, &w, lo, |a| &vs[(pad + a) * d..][..d]);
                }
            }
        }
        out
    }

    #[test]
    fn attention_is_the_same_padded_batched_or_after_a_prefix() {
        let (h, kv, d, t) = (4, 2, 12, 9);
        for win in [None, Some(4)] {
            let q = rand_vec(3, h * t * d);
            let k = rand_vec(4, kv * t * d);
            let v = rand_vec(5, kv * t * d);
            let want = single([&q, &k, &v], (h, kv, t, d), win);
            // Row 1 of a batch of two, left-padded by 3 (row 0 is other data, length t + 3).
            let tp = t + 3;
            let pad_rows = |x: &[f32], heads: usize, other: u64| -> Vec<f32> {
                let mut out = rand_vec(other, heads * tp * d);
                for hh in 0..heads {
                    let mut row = vec![0f32; 3 * d];
                    row.extend_from_slice(&x[hh * t * d..(hh + 1) * t * d]);
                    out.extend(row);
                }
                out
            };
            let s = AttnShape {
                rows: 2,
                heads: h,
                kv_heads: kv,
                len: tp,
                dim: d,
                prefix: vec![0, 0],
                pad: vec![0, 3],
                window: win,
                scale: 0.3,
            };
            let got = attend(&s, &pad_rows(&q, h, 6), &pad_rows(&k, kv, 7), &pad_rows(&v, kv, 8), &[]);
            let got_row1 = &got[tp * h * d..];
            assert_eq!(&got_row1[3 * h * d..], &want[..], "window {win:?}: padded batch");
            // The first 5 positions as a shared prefix, the last 4 as the row.
            let split = |x: &[f32], heads: usize, from: usize, to: usize| -> Vec<f32> {
                (0..heads).flat_map(|hh| x[(hh * t + from) * d..(hh * t + to) * d].to_vec()).collect()
            };
            let s = AttnShape {
                rows: 1,
                heads: h,
                kv_heads: kv,
                len: 4,
                dim: d,
                prefix: vec![5],
                pad: vec![0],
                window: win,
                scale: 0.3,
            };
            let (pk, pv) = (split(&k, kv, 0, 5), split(&v, kv, 0, 5));
            let got = attend(&s, &split(&q, h, 5, t), &split(&k, kv, 5, t), &split(&v, kv, 5, t), &[(&pk, &pv)]);
            assert_eq!(&got[..], &want[5 * h * d..], "window {win:?}: after a prefix");
        }
    }
    /// A radix tree in one flat row (a cached prefix of 2 positions, a shared node of 3, two
    /// branches of 4 and 3) gives every query the bits of its whole row, with and without a
    /// window that cuts into the cached prefix; for KV groups of 1 to 8 query heads (taken up to
    /// four at a time) and head widths with and without a tail past the SIMD chunks.
    #[test]
    fn tree_attention_equals_whole_rows() {
        let (ta, tb) = (9, 8);
        let shapes = [(4, 2, 12), (4, 1, 64), (9, 3, 40), (5, 1, 36), (8, 1, 32), (3, 3, 16)];
        for ((h, kv, d), win) in shapes.into_iter().flat_map(|s| [(s, None), (s, Some(4))]) {
            let (qa, ka, va) = (rand_vec(10, h * ta * d), rand_vec(11, kv * ta * d), rand_vec(12, kv * ta * d));
            // Row b: row a's first 5 positions, then 3 of its own.
            let (qo, ko, vo) = (rand_vec(13, h * 3 * d), rand_vec(14, kv * 3 * d), rand_vec(15, kv * 3 * d));
            let join = |a: &[f32], o: &[f32], heads: usize| -> Vec<f32> {
                (0..heads)
                    .flat_map(|hh| {
                        a[hh * ta * d..(hh * ta + 5) * d].iter().chain(&o[hh * 3 * d..(hh + 1) * 3 * d]).copied()
                    })
                    .collect()
            };
            let (qb, kb, vb) = (join(&qa, &qo, h), join(&ka, &ko, kv), join(&va, &vo, kv));
            let want_a = single([&qa, &ka, &va], (h, kv, ta, d), win);
            let want_b = single([&qb, &kb, &vb], (h, kv, tb, d), win);
            // Per head, positions from..to of x (laid out [heads, len, d]).
            let cut = |x: &[f32], heads: usize, len: usize, from: usize, to: usize| -> Vec<Vec<f32>> {
                (0..heads).map(|hh| x[(hh * len + from) * d..(hh * len + to) * d].to_vec()).collect()
            };
            // Flat row: node P = a[2..5], node A = a[5..9], node B = b[5..8].
            let flat = |x: &[f32], y: &[f32], heads: usize| -> Vec<f32> {
                let parts = [cut(x, heads, ta, 2, 5), cut(x, heads, ta, 5, 9), cut(y, heads, tb, 5, 8)];
                (0..heads).flat_map(|hh| parts.iter().flat_map(move |p| p[hh].clone())).collect()
            };
            let (q, k, v) = (flat(&qa, &qb, h), flat(&ka, &kb, kv), flat(&va, &vb, kv));
            let (pk, pv) = (cut(&ka, kv, ta, 0, 2).concat(), cut(&va, kv, ta, 0, 2).concat());
            let nodes = vec![
                TreeNode { start: 0, len: 3, pos: 2, before: vec![(KeySource::Ext(0), 0, 2)] },
                TreeNode { start: 3, len: 4, pos: 5, before: vec![(KeySource::Ext(0), 0, 2), (KeySource::Own, 0, 3)] },
                TreeNode { start: 7, len: 3, pos: 5, before: vec![(KeySource::Ext(0), 0, 2), (KeySource::Own, 0, 3)] },
            ];
            let got = attend_tree(&one_row((h, kv, 10, d), win), &q, &k, &v, &[(&pk, &pv)], &nodes);
            let row = h * d;
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            let at = format!("heads {h}, kv heads {kv}, dim {d}, window {win:?}");
            assert_eq!(bits(&got[..3 * row]), bits(&want_a[2 * row..5 * row]), "{at}: shared node");
            assert_eq!(bits(&got[3 * row..7 * row]), bits(&want_a[5 * row..]), "{at}: branch a");
            assert_eq!(bits(&got[7 * row..]), bits(&want_b[5 * row..]), "{at}: branch b");
        }
    }
}
