//! The inner loops of [`super::gemm`]: the kernel family for this CPU ([`Isa`]), one panel's work
//! over depth blocks and row tiles (`panel_job`), and the AVX-512, AVX2 and scalar tiles, each
//! output element one fused multiply-add chain in depth order whatever the kernel.
use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// The microkernel family this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// 16-lane FMA: tiles of 8 rows x 32 columns.
    Avx512,
    /// 8-lane FMA: tiles of 6 rows x 16 columns.
    Avx2,
    /// `f32::mul_add` per element: any CPU, the same results.
    Scalar,
}

impl Isa {
    /// Columns per tile (and per packed panel).
    pub fn nr(self) -> usize {
        match self {
            Isa::Avx512 => 32,
            Isa::Avx2 | Isa::Scalar => 16,
        }
    }

    /// Rows per tile.
    fn mr(self) -> usize {
        match self {
            Isa::Avx512 => 8,
            Isa::Avx2 | Isa::Scalar => 6,
        }
    }

    /// The kernels this CPU can run, best first.
    pub fn available() -> Vec<Isa> {
        let mut v = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                v.push(Isa::Avx512);
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                v.push(Isa::Avx2);
            }
        }
        v.push(Isa::Scalar);
        v
    }

    /// The best kernel on this CPU (`MORES_GEMM=avx2|scalar` forces a lesser one, to compare).
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let avail = Isa::available();
            let forced = match std::env::var("MORES_GEMM").as_deref() {
                Ok("avx2") => Some(Isa::Avx2),
                Ok("scalar") => Some(Isa::Scalar),
                _ => None,
            };
            forced.filter(|f| avail.contains(f)).unwrap_or(avail[0])
        })
    }
}

/// Depth of a Q8_0 block (values per scale).
pub(super) const Q8_DEPTH: usize = 32;

/// The right-hand side of a product, as plain addresses the threads share.
#[derive(Clone, Copy)]
pub(super) enum Src {
    /// A packed f32 weight's panels.
    Packed(usize),
    /// A packed Q8_0 weight's int8 values and scales.
    Q8(usize, usize),
    /// b [k, n] row-major, as stored.
    Rows(usize),
}

/// A raw output pointer shared by the threads, each writing its own columns.
#[derive(Clone, Copy)]
pub(super) struct Out(pub(super) *mut f32);
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer, taken through a method so closures capture the whole (Sync) wrapper.
    pub(super) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// The work of one panel j of an [m, k] x [k, n] product (every depth block, every row tile),
/// as a closure the threads share: `one(j, c, ldc)` writes panel j's columns of the m rows at c
/// (row stride ldc). SAFETY: x holds m * k values, `src` holds k depth steps of n columns
/// (packed for `isa` or row-major); each call's c holds m rows of ldc values, the panel's
/// columns in range.
pub(super) unsafe fn panel_job(
    isa: Isa,
    x: *const f32,
    m: usize,
    k: usize,
    n: usize,
    src: Src,
) -> impl Fn(usize, Out, usize) + Sync {
    let (nr, mr) = (isa.nr(), isa.mr());
    // A plain address, shared by the threads.
    let x = x as usize;
    // Depth blocks of KC: a panel's block (KC x NR values, 32 KiB for AVX-512) stays in L1 while
    // every row tile passes over it. A tile stores its partial sums after each block and the next
    // block starts from them, so each element is still one fma chain in depth order.
    let one = move |j: usize, c: Out, ldc: usize| {
        let cols = nr.min(n - j * nr);
        // A panel of an unpacked b (the input gradient's w as stored) has its depth steps a whole
        // row of b apart; at widths like 576 or 1536 floats those rows fall into a few L1 sets
        // and evict each other before the next row tile comes back to them. With several row
        // tiles, each depth block is first copied to a contiguous KC x NR buffer, as a packed
        // weight's panel is laid out (the same values, so the same bits). A Q8_0 weight's block
        // is dequantized into that buffer.
        let buffered = match src {
            Src::Rows(_) => m > mr,
            Src::Q8(..) => true,
            Src::Packed(_) => false,
        };
        let mut block = if buffered { vec![0f32; KC * nr] } else { Vec::new() };
        let mut p0 = 0;
        loop {
            let depth = KC.min(k - p0);
            // The block's values (b, depth stride ldb) and the next block's bytes to prefetch:
            // a packed panel's next depth block, or the next panel's first (packed panels lie
            // end to end). They are fetched into L2 while this block's row tiles run: the first
            // pass over a block straight from memory otherwise waits on DRAM for most of it (the
            // weights stream from memory once per forward pass; 0.72x of the isolated rate in
            // place). A prefetch never faults, so the last panel's look past its end is harmless;
            // it moves no value, so no bit changes.
            let (b, ldb, ahead, lines): (*const f32, usize, *const u8, usize) = match src {
                Src::Packed(data) => {
                    let b = (data as *const f32).wrapping_add((j * k + p0) * nr);
                    (b, nr, b.wrapping_add(depth * nr) as *const u8, (KC * nr * 4).div_ceil(64))
                }
                Src::Q8(q, d) => {
                    let q = (q as *const i8).wrapping_add((j * k + p0) * nr);
                    let d = (d as *const f32).wrapping_add((j * (k / Q8_DEPTH) + p0 / Q8_DEPTH) * nr);
                    // SAFETY: panel j holds k depth steps of nr values and k / 32 scale rows; p0
                    // is a multiple of KC, itself a multiple of 32.
                    unsafe {
                        let q = std::slice::from_raw_parts(q, depth * nr);
                        let d = std::slice::from_raw_parts(d, depth.div_ceil(Q8_DEPTH) * nr);
                        dequantize(isa, q, d, &mut block[..depth * nr]);
                    }
                    (block.as_ptr(), nr, q.wrapping_add(depth * nr) as *const u8, (KC * nr).div_ceil(64))
                }
                Src::Rows(b) => {
                    let b = (b as *const f32).wrapping_add(j * nr);
                    if buffered {
                        for p in 0..depth {
                            // SAFETY: row p0 + p of b has at least `cols` values from this
                            // panel's start (the caller's bounds: b holds k rows of n values).
                            let row = unsafe { std::slice::from_raw_parts(b.wrapping_add((p0 + p) * n), cols) };
                            block[p * nr..p * nr + cols].copy_from_slice(row);
                        }
                        (block.as_ptr(), nr, std::ptr::null(), 0)
                    } else {
                        (b.wrapping_add(p0 * n), n, std::ptr::null(), 0)
                    }
                }
            };
            let tiles = m.div_ceil(mr);
            let mut i = 0;
            while i < m {
                let rows = mr.min(m - i);
                let tile_no = i / mr;
                let (l0, l1) = (lines * tile_no / tiles, lines * (tile_no + 1) / tiles);
                let t = Tile {
                    ahead: ahead.wrapping_add(l0 * 64),
                    ahead_lines: l1 - l0,
                    k: depth,
                    first: p0 == 0,
                    a: (x as *const f32).wrapping_add(i * k + p0),
                    lda: k,
                    b,
                    ldb,
                    c: c.at(i * ldc),
                    ldc,
                    cols,
                };
                // SAFETY: rows i..i+rows of x and y, columns j*nr..j*nr+cols of y, depth p0..p0+depth.
                unsafe { tile(isa, rows, t) };
                i += rows;
            }
            p0 += depth;
            if p0 >= k {
                break;
            }
        }
    };
    one
}

/// Depth per block (a multiple of [`Q8_DEPTH`]).
const KC: usize = 256;

/// out[p * nr + c] = q[p * nr + c] * d[(p / 32) * nr + c] over a Q8_0 panel's depth block: exact
/// products, so every instruction set gives the same values (compiled for the widest one).
fn dequantize(isa: Isa, q: &[i8], d: &[f32], out: &mut [f32]) {
    #[inline(always)]
    fn run<const NR: usize>(q: &[i8], d: &[f32], out: &mut [f32]) {
        for ((o, q), p) in out.chunks_exact_mut(NR).zip(q.chunks_exact(NR)).zip(0..) {
            let d = &d[(p / Q8_DEPTH) * NR..][..NR];
            for c in 0..NR {
                o[c] = q[c] as f32 * d[c];
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(q: &[i8], d: &[f32], out: &mut [f32]) {
        run::<32>(q, d, out)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(q: &[i8], d: &[f32], out: &mut [f32]) {
        run::<16>(q, d, out)
    }
    match isa {
        // SAFETY: the kernel family was chosen from the CPU's features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512(q, d, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2(q, d, out) },
        _ => match isa.nr() {
            32 => run::<32>(q, d, out),
            _ => run::<16>(q, d, out),
        },
    }
}

/// One tile's operands: up to MR rows of a (row stride `lda`) times depth `k` of b (depth stride
/// `ldb`), into `cols` (at most NR) columns of c (row stride `ldc`). `first`: start the sums from
/// zero, else from c (the previous depth block's partial sums).
#[derive(Clone, Copy)]
struct Tile {
    /// Lines (64 bytes each, from `ahead`) to prefetch into L2 over this tile's depth steps.
    ahead: *const u8,
    ahead_lines: usize,
    k: usize,
    first: bool,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
}

/// `for $p in 0..t.k { $body }`, with the tile's prefetch lines issued at even intervals: the
/// depth steps run in as many stretches as there are lines to fetch (at most one a step), each
/// stretch after its lines' prefetches, so the fma loop itself carries no test.
#[cfg(target_arch = "x86_64")]
macro_rules! spread_prefetch {
    ($t:ident, $p:ident, $body:block) => {
        let stretches = $t.ahead_lines.min($t.k);
        let mut start = 0;
        for s in 0..=stretches {
            if s < stretches {
                for l in $t.ahead_lines * s / stretches..$t.ahead_lines * (s + 1) / stretches {
                    _mm_prefetch::<_MM_HINT_T1>($t.ahead.wrapping_add(l * 64) as *const i8);
                }
            }
            let end = if s < stretches { $t.k * (s + 1) / stretches } else { $t.k };
            for $p in start..end $body
            start = end;
        }
    };
}

/// One tile of `rows` rows (at most the kernel's MR).
unsafe fn tile(isa: Isa, rows: usize, t: Tile) {
    macro_rules! rows {
        ($f:ident, $($r:literal)*) => {
            match rows {
                $($r => $f::<$r>(t),)*
                _ => unreachable!("tile rows {rows}"),
            }
        };
    }
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => rows!(tile_avx512, 1 2 3 4 5 6 7 8),
            #[cfg(target_arch = "x86_64")]
            // Full 16-column panels take plain loads and stores, compiled apart from the masked
            // ones (the last panel of an unpacked b).
            Isa::Avx2 if t.cols == 16 => rows!(tile_avx2_full, 1 2 3 4 5 6),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => rows!(tile_avx2_masked, 1 2 3 4 5 6),
            _ => tile_scalar(rows, t),
        }
    }
}

unsafe fn tile_scalar(rows: usize, t: Tile) {
    for i in 0..rows {
        for j in 0..t.cols {
            unsafe {
                let c = t.c.add(i * t.ldc + j);
                let mut acc = if t.first { 0f32 } else { *c };
                for p in 0..t.k {
                    acc = (*t.a.add(i * t.lda + p)).mul_add(*t.b.add(p * t.ldb + j), acc);
                }
                *c = acc;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const R: usize>(t: Tile) {
    // Masks select the columns that exist: loads past them read nothing (no fault), stores
    // past them write nothing.
    let full = |n: usize| if n >= 16 { 0xFFFFu16 } else { ((1u32 << n) - 1) as u16 };
    let (m0, m1) = (full(t.cols), full(t.cols.saturating_sub(16)));
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    unsafe {
        if !t.first {
            for (i, acc) in acc.iter_mut().enumerate() {
                acc[0] = _mm512_maskz_loadu_ps(m0, t.c.add(i * t.ldc));
                acc[1] = _mm512_maskz_loadu_ps(m1, t.c.wrapping_add(i * t.ldc + 16));
            }
        }
        spread_prefetch!(t, p, {
            let bp = t.b.add(p * t.ldb);
            let b0 = _mm512_maskz_loadu_ps(m0, bp);
            let b1 = _mm512_maskz_loadu_ps(m1, bp.wrapping_add(16));
            for (i, acc) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*t.a.add(i * t.lda + p));
                acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
            }
        });
        for (i, acc) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(t.c.add(i * t.ldc), m0, acc[0]);
            _mm512_mask_storeu_ps(t.c.wrapping_add(i * t.ldc + 16), m1, acc[1]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2_full<const R: usize>(t: Tile) {
    unsafe { tile_avx2::<R, true>(t) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2_masked<const R: usize>(t: Tile) {
    unsafe { tile_avx2::<R, false>(t) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile_avx2<const R: usize, const FULL: bool>(t: Tile) {
    let lane = |n: usize| {
        let v: [i32; 8] = std::array::from_fn(|l| if l < n { -1 } else { 0 });
        unsafe { _mm256_loadu_si256(v.as_ptr() as *const __m256i) }
    };
    let full = FULL;
    let (m0, m1) = (lane(t.cols), lane(t.cols.saturating_sub(8)));
    let load = |p: *const f32, m: __m256i| unsafe {
        if full {
            _mm256_loadu_ps(p)
        } else {
            _mm256_maskload_ps(p, m)
        }
    };
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    unsafe {
        if !t.first {
            for (i, acc) in acc.iter_mut().enumerate() {
                acc[0] = load(t.c.add(i * t.ldc), m0);
                acc[1] = load(t.c.wrapping_add(i * t.ldc + 8), m1);
            }
        }
        spread_prefetch!(t, p, {
            let bp = t.b.add(p * t.ldb);
            let b0 = load(bp, m0);
            let b1 = load(bp.wrapping_add(8), m1);
            for (i, acc) in acc.iter_mut().enumerate() {
                let av = _mm256_set1_ps(*t.a.add(i * t.lda + p));
                acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
            }
        });
        for (i, acc) in acc.iter().enumerate() {
            if full {
                _mm256_storeu_ps(t.c.add(i * t.ldc), acc[0]);
                _mm256_storeu_ps(t.c.add(i * t.ldc + 8), acc[1]);
            } else {
                _mm256_maskstore_ps(t.c.add(i * t.ldc), m0, acc[0]);
                _mm256_maskstore_ps(t.c.wrapping_add(i * t.ldc + 8), m1, acc[1]);
            }
        }
    }
}
