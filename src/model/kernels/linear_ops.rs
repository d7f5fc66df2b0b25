//! A linear layer's training-mode products as single candle nodes on the CPU, both on mores'
//! GEMM: a frozen weight's product that passes back only the input's gradient
//! (`FrozenLinear`), and a frozen weight with its LoRA factors and dropout in one node with
//! gradients for the input and both factors (`AdaptedLinear`). The architectures' `Linear`
//! builds them when a forward pass needs gradients.
use super::gemm::Packed;
use candle_core::Tensor;
use std::sync::Arc;

/// x [n, in] times a frozen w [out, in] transposed on the CPU, returning only the input's
/// gradient: candle's matmul backward always computes the weight's too (a [out, in] product per
/// layer per step, thrown away for a frozen base; measured in candle-notes: step time and peak
/// memory roughly halved without it). Forward on the packed weight, backward g · w on w as stored.
pub(crate) struct FrozenLinear {
    pub(crate) w: Tensor,
    pub(crate) packed: Arc<Packed>,
}

impl candle_core::CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (m, k) = l.shape().dims2()?;
        let p = &self.packed;
        if k != p.k {
            candle_core::bail!("frozen-linear: input width {k} vs weight {}x{}", p.n, p.k)
        }
        let y = linear_fwd(super::cpu_f32(s, l)?, m, p, None);
        Ok((candle_core::CpuStorage::F32(y), (m, p.n).into()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (m, n) = grad.dims2()?;
        let (_, k) = self.w.dims2()?;
        let (g, w) = (grad.contiguous()?, self.w.contiguous()?);
        let dx = super::with_f32s(&[&g, &w], |v| linear_bwd(v[0], &[], (m, n, k), v[1], None, true).0)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?
            .expect("asked for");
        Ok(Some(Tensor::from_vec(dx, (m, k), grad.device())?))
    }
}

/// x [m, in] · wᵀ + scale · (d(x) · aᵀ) · bᵀ for a frozen w [out, in], LoRA factors a [r, in],
/// b [out, r] and d the dropout mask (elementwise; identity without one), as one differentiable
/// node with gradients for x, a and b (w gets none). Every product is mores' GEMM (one fma chain
/// per element, so a row's result does not depend on the row count). With u = d(x) aᵀ and
/// h = g b: dx = g w + scale · d(h a), da = scale · hᵀ d(x), db = scale · gᵀ u.
pub(crate) struct AdaptedLinear {
    pub(crate) w: Tensor,
    pub(crate) packed: Arc<Packed>,
    pub(crate) scale: f32,
    /// Inverted-dropout factors for x's m * in values.
    pub(crate) mask: Option<Vec<f32>>,
}

impl AdaptedLinear {
    /// The operands' shapes agree with w and the mask: x [m, in], a [r, in], b [out, r].
    fn check(&self, (m, k): (usize, usize), a: (usize, usize), b: (usize, usize)) -> candle_core::Result<()> {
        let p = &self.packed;
        if k != p.k || a.1 != k || b.0 != p.n || b.1 != a.0 {
            candle_core::bail!("adapted-linear: x [_, {k}], w [{}, {}], a {:?}, b {:?}", p.n, p.k, a, b)
        }
        if self.mask.as_ref().is_some_and(|d| d.len() != m * k) {
            candle_core::bail!("adapted-linear: dropout mask for another shape")
        }
        Ok(())
    }

    /// The adapter's operands as slices.
    fn part<'a>(&'a self, a: &'a [f32], b: &'a [f32], r: usize) -> LoraPart<'a> {
        LoraPart { a, b, r, scale: self.scale, mask: self.mask.as_deref() }
    }
}

impl candle_core::CustomOp3 for AdaptedLinear {
    fn name(&self) -> &'static str {
        "adapted-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &candle_core::CpuStorage,
        xl: &candle_core::Layout,
        as_: &candle_core::CpuStorage,
        al: &candle_core::Layout,
        bs: &candle_core::CpuStorage,
        bl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let ((m, k), (r, ka), (n, rb)) = (xl.shape().dims2()?, al.shape().dims2()?, bl.shape().dims2()?);
        self.check((m, k), (r, ka), (n, rb))?;
        let (x, a, b) = (super::cpu_f32(xs, xl)?, super::cpu_f32(as_, al)?, super::cpu_f32(bs, bl)?);
        let y = linear_fwd(x, m, &self.packed, Some(&self.part(a, b, r)));
        Ok((candle_core::CpuStorage::F32(y), (m, n).into()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let ((m, k), (r, _), (n, _)) = (x.dims2()?, a.dims2()?, b.dims2()?);
        let (g, x_, a_, b_, w) =
            (grad.contiguous()?, x.contiguous()?, a.contiguous()?, b.contiguous()?, self.w.contiguous()?);
        let want_x = x.track_op();
        let (dx, ab) = super::with_f32s(&[&g, &x_, &a_, &b_, &w], |v| {
            linear_bwd(v[0], v[1], (m, n, k), v[4], Some(&self.part(v[2], v[3], r)), want_x)
        })
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let (da, db) = ab.expect("an adapter gives its gradients");
        let dev = grad.device();
        Ok((
            dx.map(|dx| Tensor::from_vec(dx, (m, k), dev)).transpose()?,
            Some(Tensor::from_vec(da, (r, k), dev)?),
            Some(Tensor::from_vec(db, (n, r), dev)?),
        ))
    }
}

/// A LoRA path's operands as f32 slices: a [r, in], b [out, r], the scale and the inverted-dropout
/// factors for the input (none: no dropout).
pub(crate) struct LoraPart<'a> {
    pub(crate) a: &'a [f32],
    pub(crate) b: &'a [f32],
    pub(crate) r: usize,
    pub(crate) scale: f32,
    pub(crate) mask: Option<&'a [f32]>,
}

/// x with the dropout mask applied (borrowed as is without one).
fn dropped<'a>(mask: Option<&[f32]>, x: &'a [f32]) -> std::borrow::Cow<'a, [f32]> {
    match mask {
        Some(m) => x.iter().zip(m).map(|(x, m)| x * m).collect::<Vec<f32>>().into(),
        None => x.into(),
    }
}

/// [rows, cols] row-major to [cols, rows].
pub(super) fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; rows * cols];
    for (i, row) in v.chunks_exact(cols).enumerate() {
        for (j, &x) in row.iter().enumerate() {
            t[j * rows + i] = x;
        }
    }
    t
}

/// y [m, n] = x [m, k] · wᵀ (w packed), plus scale · (d(x) · aᵀ) · bᵀ with an adapter: the
/// forward of [`FrozenLinear`] and [`AdaptedLinear`].
pub(crate) fn linear_fwd(x: &[f32], m: usize, w: &Packed, lora: Option<&LoraPart>) -> Vec<f32> {
    use super::gemm::{matmul_packed, Isa};
    let (n, k) = (w.n, w.k);
    let mut y = vec![0f32; m * n];
    matmul_packed(x, m, w, &mut y);
    if let Some(l) = lora {
        let isa = Isa::best();
        let mut u = vec![0f32; m * l.r];
        matmul_packed(&dropped(l.mask, x), m, &Packed::new(l.a, l.r, k, isa), &mut u);
        let mut d = vec![0f32; m * n];
        matmul_packed(&u, m, &Packed::new(l.b, n, l.r, isa), &mut d);
        // The composed path's order: base + (LoRA product * scale).
        for (y, d) in y.iter_mut().zip(&d) {
            *y += *d * l.scale;
        }
    }
    y
}

/// The gradients of [`linear_fwd`] given the output's g [m, n] and the input x [m, k], w [n, k]
/// as stored: dx (when `want_x`) and, with an adapter, (da [r, k], db [n, r]). With u = d(x) aᵀ
/// and h = g b: dx = g w + scale · d(h a), da = scale · hᵀ d(x), db = scale · gᵀ u.
#[allow(clippy::type_complexity)]
pub(crate) fn linear_bwd(
    g: &[f32],
    x: &[f32],
    (m, n, k): (usize, usize, usize),
    w: &[f32],
    lora: Option<&LoraPart>,
    want_x: bool,
) -> (Option<Vec<f32>>, Option<(Vec<f32>, Vec<f32>)>) {
    use super::gemm::matmul_nn;
    let Some(l) = lora else {
        return (
            want_x.then(|| {
                let mut dx = vec![0f32; m * k];
                matmul_nn(g, m, n, w, k, &mut dx);
                dx
            }),
            None,
        );
    };
    let (r, s) = (l.r, l.scale);
    // h = g b [m, r]; u = x aᵀ [m, r].
    let mut h = vec![0f32; m * r];
    matmul_nn(g, m, n, l.b, r, &mut h);
    let xd = dropped(l.mask, x);
    let mut u = vec![0f32; m * r];
    matmul_nn(&xd, m, k, &transpose(l.a, r, k), r, &mut u);
    let dx = want_x.then(|| {
        let mut dx = vec![0f32; m * k];
        matmul_nn(g, m, n, w, k, &mut dx);
        let mut ha = vec![0f32; m * k];
        matmul_nn(&h, m, r, l.a, k, &mut ha);
        let ha = dropped(l.mask, &ha);
        for (d, e) in dx.iter_mut().zip(ha.iter()) {
            *d += *e * s;
        }
        dx
    });
    let mut da = vec![0f32; r * k];
    matmul_nn(&transpose(&h, m, r), r, m, &xd, k, &mut da);
    let mut db = vec![0f32; n * r];
    matmul_nn(&transpose(g, m, n), n, m, &u, r, &mut db);
    for v in da.iter_mut().chain(db.iter_mut()) {
        *v *= s;
    }
    (dx, Some((da, db)))
}
