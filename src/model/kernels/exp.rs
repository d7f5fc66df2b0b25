//! e^x over f32 slices, vectorised, with the bits of the C library's `expf` as mores has always
//! called it (Rust's `f32::exp` is glibc's `expf`, which on x86-64 with FMA runs its FMA build).
//!
//! Why: the probe's SiLU (SmolLM2's MLP: 1,536 values per token per layer), the attention's
//! softmax and the label log-probabilities call `expf` once per element, a scalar call each: 6-8%
//! of SmolLM2's probe (perf, 2026-12-05). Changing the function would change every probability
//! mores has recorded, so this is glibc's algorithm (from Arm's optimized-routines: x / ln2 * 32
//! split as k + r, 2^(k/32) from a 32-entry table, a cubic in r, all in double, rounded to
//! float once) with the very operations of its FMA build, as its disassembly shows them: the
//! same fused multiply-adds in the same places. IEEE arithmetic then leaves no freedom, so each
//! lane gives glibc's bits; the portable form computes the same formula with `f64::mul_add`
//! (correctly rounded on any CPU), so every machine gives the same numbers. Inputs outside the
//! main path (|x| >= 2^6 * 1.375, about 88, NaN, infinities) go to the C library's `expf`, as
//! glibc itself branches there. Tested against `f32::exp` on every f32 in [-88, 88] (ignored
//! test, minutes) and on a sample of them (always).

/// 2^(i/32) as f64 bits, minus i << 47, so adding k << 47 gives 2^(k/32) (glibc's `__exp2f_data`
/// table, read from its libm).
const TAB: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];
/// 32 / ln 2.
const INV_LN2_N: f64 = f64::from_bits(0x40471547652b82fe);
/// 1.5 * 2^52: adding it rounds to an integer held in the low bits.
const SHIFT: f64 = f64::from_bits(0x4338000000000000);
/// The cubic's coefficients for r in units of 1/32 (glibc's `poly_scaled`).
const C0: f64 = f64::from_bits(0x3ebc6af84b912394);
const C1: f64 = f64::from_bits(0x3f2ebfce50fac4f3);
const C2: f64 = f64::from_bits(0x3f962e42ff0c52d6);

/// Whether x takes glibc's main path: the top 12 bits of |x| at most those of 88 minus one.
#[inline(always)]
fn main_path(x: f32) -> bool {
    (x.to_bits() >> 20) & 0x7ff <= 0x42a
}

/// e^x, one value: the main path as glibc's FMA build computes it, the rest by the C library.
#[inline]
pub fn exp(x: f32) -> f32 {
    if !main_path(x) {
        return x.exp();
    }
    let xd = x as f64;
    let kd = INV_LN2_N.mul_add(xd, SHIFT);
    let ki = kd.to_bits();
    let kd = kd - SHIFT;
    let r = INV_LN2_N.mul_add(xd, -kd);
    let s = f64::from_bits(TAB[(ki & 31) as usize].wrapping_add(ki << 47));
    let z = r.mul_add(C0, C1);
    let r2 = r * r;
    let y = r.mul_add(C2, 1.0);
    let y = z.mul_add(r2, y);
    (y * s) as f32
}

/// xs[i] = e^xs[i], in place, vectorised where the CPU allows (same bits as [`exp`]).
pub fn exp_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { exp_avx512(xs) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { exp_avx2(xs) };
        }
    }
    for x in xs {
        *x = exp(*x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_avx512(xs: &mut [f32]) {
    use std::arch::x86_64::*;
    let tab: [__m512i; 4] = std::array::from_fn(|q| unsafe { _mm512_loadu_si512(TAB[8 * q..].as_ptr().cast()) });
    let (inv, shift, c0, c1, c2, one) = (
        _mm512_set1_pd(INV_LN2_N),
        _mm512_set1_pd(SHIFT),
        _mm512_set1_pd(C0),
        _mm512_set1_pd(C1),
        _mm512_set1_pd(C2),
        _mm512_set1_pd(1.0),
    );
    // Eight lanes in double.
    let eight = |x: __m256| -> __m256 {
        let xd = _mm512_cvtps_pd(x);
        let kd = _mm512_fmadd_pd(inv, xd, shift);
        let ki = _mm512_castpd_si512(kd);
        let kd = _mm512_sub_pd(kd, shift);
        let r = _mm512_fmsub_pd(inv, xd, kd);
        // TAB[ki & 31]: entries 0-15 from tab[0..2], 16-31 from tab[2..4], by bit 4.
        let idx = _mm512_and_si512(ki, _mm512_set1_epi64(31));
        let lo = _mm512_permutex2var_epi64(tab[0], idx, tab[1]);
        let hi = _mm512_permutex2var_epi64(tab[2], idx, tab[3]);
        let t = _mm512_mask_blend_epi64(_mm512_test_epi64_mask(idx, _mm512_set1_epi64(16)), lo, hi);
        let s = _mm512_castsi512_pd(_mm512_add_epi64(t, _mm512_slli_epi64::<47>(ki)));
        let z = _mm512_fmadd_pd(r, c0, c1);
        let r2 = _mm512_mul_pd(r, r);
        let y = _mm512_fmadd_pd(r, c2, one);
        let y = _mm512_fmadd_pd(z, r2, y);
        _mm512_cvtpd_ps(_mm512_mul_pd(y, s))
    };
    let mut chunks = xs.chunks_exact_mut(16);
    for c in &mut chunks {
        let orig: [f32; 16] = (*c).try_into().expect("a chunk of 16");
        let x = unsafe { _mm512_loadu_ps(orig.as_ptr()) };
        // Lanes off the main path: |x|'s top 12 bits above 0x42a (unsigned compare).
        let top = _mm512_and_si512(_mm512_srli_epi32::<20>(_mm512_castps_si512(x)), _mm512_set1_epi32(0x7ff));
        let off = _mm512_cmpgt_epu32_mask(top, _mm512_set1_epi32(0x42a));
        let lo = eight(_mm512_castps512_ps256(x));
        let hi = eight(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x))));
        unsafe {
            _mm256_storeu_ps(c.as_mut_ptr(), lo);
            _mm256_storeu_ps(c.as_mut_ptr().add(8), hi);
        }
        if off != 0 {
            for (i, v) in c.iter_mut().enumerate() {
                if off & (1 << i) != 0 {
                    *v = orig[i].exp();
                }
            }
        }
    }
    for x in chunks.into_remainder() {
        *x = exp(*x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_avx2(xs: &mut [f32]) {
    use std::arch::x86_64::*;
    let (inv, shift, c0, c1, c2, one) = (
        _mm256_set1_pd(INV_LN2_N),
        _mm256_set1_pd(SHIFT),
        _mm256_set1_pd(C0),
        _mm256_set1_pd(C1),
        _mm256_set1_pd(C2),
        _mm256_set1_pd(1.0),
    );
    let mut chunks = xs.chunks_exact_mut(4);
    for c in &mut chunks {
        if !c.iter().all(|&x| main_path(x)) {
            for x in c.iter_mut() {
                *x = exp(*x);
            }
            continue;
        }
        let xd = _mm256_cvtps_pd(unsafe { _mm_loadu_ps(c.as_ptr()) });
        let kd = _mm256_fmadd_pd(inv, xd, shift);
        let ki = _mm256_castpd_si256(kd);
        let kd = _mm256_sub_pd(kd, shift);
        let r = _mm256_fmsub_pd(inv, xd, kd);
        let idx = _mm256_and_si256(ki, _mm256_set1_epi64x(31));
        let t = unsafe { _mm256_i64gather_epi64::<8>(TAB.as_ptr().cast(), idx) };
        let s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64::<47>(ki)));
        let z = _mm256_fmadd_pd(r, c0, c1);
        let r2 = _mm256_mul_pd(r, r);
        let y = _mm256_fmadd_pd(r, c2, one);
        let y = _mm256_fmadd_pd(z, r2, y);
        unsafe { _mm_storeu_ps(c.as_mut_ptr(), _mm256_cvtpd_ps(_mm256_mul_pd(y, s))) };
    }
    for x in chunks.into_remainder() {
        *x = exp(*x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(xs: &[f32]) {
        let mut v = xs.to_vec();
        exp_in_place(&mut v);
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // The AVX2 kernel too, where the AVX-512 one ran above.
            let mut v2 = xs.to_vec();
            unsafe { exp_avx2(&mut v2) };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&v2), bits(&v), "AVX2 and the widest kernel");
        }
        for (&x, &y) in xs.iter().zip(&v) {
            let (want, one) = (x.exp(), exp(x));
            assert!(
                y.to_bits() == want.to_bits() || (y.is_nan() && want.is_nan()),
                "exp({x:e}) = {y:e} vectorised, C library {want:e}"
            );
            assert!(one.to_bits() == want.to_bits() || (one.is_nan() && want.is_nan()), "exp({x:e}) one at a time");
        }
    }

    /// The C library's bits, vectorised and one at a time: a spread of the main path (a stride
    /// through every f32 bit pattern in [-88, 88]), the edges of the branch, specials, lengths
    /// that leave remainders.
    #[test]
    fn exp_is_the_c_librarys_expf_bit_for_bit() {
        let mut xs: Vec<f32> = (0..=u32::MAX).step_by(4099).map(f32::from_bits).filter(|x| x.abs() <= 88.0).collect();
        xs.extend([0.0, -0.0, 1.0, -1.0, 87.99, -87.99, 88.0, -88.0, 88.72, -103.0, -104.0, 89.0, f32::MIN_POSITIVE]);
        xs.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN, 1e-30, -1e-30]);
        let n = xs.len();
        for i in 0..n / 3 {
            xs.swap(i, (i * 7919) % n); // specials land inside vectors too
        }
        check(&xs);
        check(&xs[..xs.len() - 5]);
    }

    /// Every f32 in [-88, 88]: about 2.2 billion values, each kernel (run with --ignored; about
    /// 30 s here), and the portable form on every 61st.
    #[test]
    #[ignore]
    fn exp_is_the_c_librarys_expf_on_every_main_path_value() {
        let (lo, hi) = (0u32, 88f32.to_bits());
        for sign in [0u32, 1 << 31] {
            let mut buf = Vec::with_capacity(1 << 20);
            let mut b = lo;
            while b <= hi {
                buf.clear();
                let end = (b as u64 + (1 << 20)).min(hi as u64 + 1) as u32;
                buf.extend((b..end).map(|u| f32::from_bits(u | sign)));
                let mut v = buf.clone();
                exp_in_place(&mut v);
                for (&x, &y) in buf.iter().zip(&v) {
                    assert_eq!(y.to_bits(), x.exp().to_bits(), "exp({x:e})");
                }
                #[cfg(target_arch = "x86_64")]
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    let mut v2 = buf.clone();
                    unsafe { exp_avx2(&mut v2) };
                    assert!(v2.iter().zip(&v).all(|(a, b)| a.to_bits() == b.to_bits()), "AVX2 kernel from {b:#x}");
                }
                for (&x, &y) in buf.iter().zip(&v).step_by(61) {
                    assert_eq!(exp(x).to_bits(), y.to_bits(), "exp({x:e}) one at a time");
                }
                b = end;
            }
        }
    }
}
