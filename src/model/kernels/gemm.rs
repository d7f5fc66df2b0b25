//! f32 matrix products for the CPU: y = x · wᵀ with w packed once per weight, and y = g · w for
//! the input gradient of a frozen weight, in mores' own microkernels.
//!
//! Why not candle's matmul (the `gemm` crate): it packs the weight afresh on every call (measured
//! at 16% of a probe's CPU time with prefix reuse, since the radix tree runs several small passes
//! per batch), runs its 8-lane AVX2 kernel even where the CPU has AVX-512, and sums each output
//! in an order that depends on the product's shape (`matmul.rs` pads rows to keep one order).
//!
//! Here every output element is one fused multiply-add chain over the depth, from zero, in depth
//! order: `c = fma(x[i][p], w[j][p], c)` for p = 0, 1, .... The SIMD kernels only decide how many
//! elements advance side by side, so a row's result does not depend on the row count, the
//! other rows, the thread split, or the instruction set: the AVX-512, AVX2 and scalar kernels give
//! the same bits (tested). The kernel is chosen once per process from the CPU's features.
use rayon::prelude::*;
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

/// A weight w [n, k] stored for y = x · wᵀ: panels of `nr` output columns, each panel holding,
/// for every depth p, the `nr` values w[j][p] side by side (zeros past the last column).
pub struct Packed {
    pub n: usize,
    pub k: usize,
    isa: Isa,
    data: Panels,
}

/// The values of a packed weight.
enum Panels {
    /// f32: panel j's depth p, column c at [(j * k + p) * nr + c].
    F32(Vec<f32>),
    /// A GGUF Q8_0 weight as stored (per row, blocks of 32 int8 values along the depth and one
    /// f16 scale): q at [(j * k + p) * nr + c], the scale of depth block p / 32 at
    /// [(j * k / 32 + p / 32) * nr + c]. Each value is q * d, which is exact in f32 (an 11-bit
    /// significand times an 8-bit integer), so it is the f32 weight candle's dequantization
    /// gives, bit for bit, at a quarter of the bytes. Products dequantize a depth block at a time
    /// into a buffer and run the f32 kernel on it: the same fma chains. For a large output head
    /// multiplied at a few read positions, the bytes streamed from memory are the cost.
    Q8 { q: Vec<i8>, d: Vec<f32> },
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed({} x {}, {:?})", self.n, self.k, self.isa)
    }
}

impl Packed {
    /// Pack w [n, k] (row-major) for `isa`'s kernels.
    pub fn new(w: &[f32], n: usize, k: usize, isa: Isa) -> Packed {
        assert_eq!(w.len(), n * k, "packed weight: {} values for {n} x {k}", w.len());
        let nr = isa.nr();
        let panels = n.div_ceil(nr);
        let mut data = vec![0f32; panels * k * nr];
        if k > 0 {
            data.par_chunks_mut(k * nr).enumerate().for_each(|(j, panel)| {
                for c in 0..nr.min(n - j * nr) {
                    let row = &w[(j * nr + c) * k..(j * nr + c + 1) * k];
                    for (p, &v) in row.iter().enumerate() {
                        panel[p * nr + c] = v;
                    }
                }
            });
        }
        Packed { n, k, isa, data: Panels::F32(data) }
    }

    /// Pack a GGUF Q8_0 weight [n, k] from its stored bytes (per row, k / 32 blocks of a
    /// little-endian f16 scale and 32 int8 values), keeping the int8 values (see [`Panels::Q8`]).
    pub fn from_q8_0(blocks: &[u8], n: usize, k: usize, isa: Isa) -> Result<Packed, String> {
        const BLOCK: usize = 2 + Q8_DEPTH;
        if !k.is_multiple_of(Q8_DEPTH) || blocks.len() != n * (k / Q8_DEPTH) * BLOCK {
            return Err(format!(
                "Q8_0 weight of {n} x {k}: {} bytes, expected {} in blocks of {Q8_DEPTH}",
                blocks.len(),
                n * (k / Q8_DEPTH) * BLOCK
            ));
        }
        let (nr, kb) = (isa.nr(), k / Q8_DEPTH);
        let panels = n.div_ceil(nr);
        let mut q = vec![0i8; panels * k * nr];
        let mut d = vec![0f32; panels * kb * nr];
        if k > 0 {
            q.par_chunks_mut(k * nr).zip(d.par_chunks_mut(kb * nr)).enumerate().for_each(|(j, (qp, dp))| {
                for c in 0..nr.min(n - j * nr) {
                    let row = &blocks[(j * nr + c) * kb * BLOCK..][..kb * BLOCK];
                    for (b, block) in row.chunks_exact(BLOCK).enumerate() {
                        dp[b * nr + c] = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                        for (i, &v) in block[2..].iter().enumerate() {
                            qp[(b * Q8_DEPTH + i) * nr + c] = v as i8;
                        }
                    }
                }
            });
        }
        Ok(Packed { n, k, isa, data: Panels::Q8 { q, d } })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match &self.data {
            Panels::F32(v) => v.len() * 4,
            Panels::Q8 { q, d } => q.len() + d.len() * 4,
        }
    }

    /// Where panel j's values come from, for [`panel_job`].
    fn source(&self) -> Src {
        match &self.data {
            Panels::F32(v) => Src::Packed(v.as_ptr() as usize),
            Panels::Q8 { q, d } => Src::Q8(q.as_ptr() as usize, d.as_ptr() as usize),
        }
    }
}

/// Depth of a Q8_0 block (values per scale).
const Q8_DEPTH: usize = 32;

/// The right-hand side of a product, as plain addresses the threads share.
#[derive(Clone, Copy)]
enum Src {
    /// A packed f32 weight's panels.
    Packed(usize),
    /// A packed Q8_0 weight's int8 values and scales.
    Q8(usize, usize),
    /// b [k, n] row-major, as stored.
    Rows(usize),
}

/// A raw output pointer shared by the threads, each writing its own columns.
#[derive(Clone, Copy)]
struct Out(*mut f32);
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer, taken through a method so closures capture the whole (Sync) wrapper.
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Products below this many multiply-adds run on one thread (rayon's hand-off costs more).
const PARALLEL_MIN: usize = 1 << 18;

/// y [m, n] = x [m, k] · wᵀ for a packed w.
pub fn matmul_packed(x: &[f32], m: usize, w: &Packed, y: &mut [f32]) {
    matmul_packed_many(x, m, &[w], &mut [y])
}

/// y [m, n] = x [m, k] · b, b [k, n] row-major (no packing: panels are column ranges of b).
/// Used for the input gradient of a frozen weight: g [m, out] · w [out, in].
pub fn matmul_nn(x: &[f32], m: usize, k: usize, b: &[f32], n: usize, y: &mut [f32]) {
    matmul_nn_on(Isa::best(), x, m, k, b, n, y)
}

fn matmul_nn_on(isa: Isa, x: &[f32], m: usize, k: usize, b: &[f32], n: usize, y: &mut [f32]) {
    assert!(x.len() >= m * k && b.len() >= k * n && y.len() >= m * n, "matmul: buffers too small");
    // SAFETY: each panel j writes only columns j*nr..min(n, j*nr+nr) of y's m rows; its loads
    // stay inside b (masked to the columns that exist) and x (m * k values).
    let one = unsafe { panel_job(isa, x.as_ptr(), m, k, n, Src::Rows(b.as_ptr() as usize)) };
    let y = Out(y.as_mut_ptr());
    run_jobs(n.div_ceil(isa.nr()), m * n * k, |j| one(j, Out(y.at(j * isa.nr())), n));
}

/// ys[i] [m, ws[i].n] = x [m, k] · ws[i]ᵀ: several packed weights over the same input (a
/// layer's q, k and v; its gate and up) as one parallel loop over every weight's panels, so one
/// fork-join instead of one per weight, with a small weight's few panels balanced against a
/// large one's. Each output element is one fma chain in depth order, as for a single weight.
pub fn matmul_packed_many(x: &[f32], m: usize, ws: &[&Packed], ys: &mut [&mut [f32]]) {
    assert_eq!(ws.len(), ys.len(), "packed matmuls: one output per weight");
    let k = ws.first().map_or(0, |w| w.k);
    assert!(x.len() >= m * k, "packed matmuls: input too small");
    for (w, y) in ws.iter().zip(ys.iter()) {
        assert!(w.k == k && y.len() >= m * w.n, "packed matmuls: shapes differ");
    }
    let jobs: Vec<_> = ws
        .iter()
        .zip(ys.iter_mut())
        .map(|(w, y)| {
            // SAFETY: each panel j writes only columns j*nr..min(n, j*nr+nr) of its own output's
            // m rows; panel reads stay inside the panel (k * nr values) and x (m * k values).
            let one = unsafe { panel_job(w.isa, x.as_ptr(), m, k, w.n, w.source()) };
            let (y, nr, n) = (Out(y.as_mut_ptr()), w.isa.nr(), w.n);
            move |j: usize| one(j, Out(y.at(j * nr)), n)
        })
        .collect();
    // Panel t of the flat numbering: weight i's panel t - first[i].
    let mut first = Vec::with_capacity(ws.len() + 1);
    first.push(0);
    for w in ws {
        first.push(first[first.len() - 1] + w.n.div_ceil(w.isa.nr()));
    }
    let flops = ws.iter().map(|w| m * w.n * k).sum();
    run_jobs(first[ws.len()], flops, |t| {
        let i = first.partition_point(|&f| f <= t) - 1;
        jobs[i](t - first[i])
    });
}

/// y [m, n] = act(x · gᵀ, x · uᵀ) for two packed weights of one shape (a gated MLP's gate and
/// up): each pair of panels is computed into two [m, nr] buffers on the thread that owns it and
/// combined there by `act` (element by element), so the gate and up activations never make a
/// round trip through memory and the activation needs no pass of its own. Each product element
/// is [`matmul_packed`]'s fma chain, and `act` sees the same values, so the bits are those of
/// the two products followed by `act` over them.
pub fn matmul_gated(
    x: &[f32],
    m: usize,
    (g, u): (&Packed, &Packed),
    act: fn(&[f32], &[f32], &mut [f32]),
    y: &mut [f32],
) {
    assert!(g.n == u.n && g.k == u.k && g.isa == u.isa, "gated matmul: gate {g:?} and up {u:?} differ");
    let (n, k, nr) = (g.n, g.k, g.isa.nr());
    assert!(x.len() >= m * k && y.len() >= m * n, "gated matmul: buffers too small");
    // SAFETY: each job writes panel j's columns of its own buffers, then those columns of y's
    // m rows; loads stay inside the panels and x (m * k values).
    let (gj, uj) = unsafe {
        (panel_job(g.isa, x.as_ptr(), m, k, n, g.source()), panel_job(u.isa, x.as_ptr(), m, k, n, u.source()))
    };
    let y = Out(y.as_mut_ptr());
    run_jobs(n.div_ceil(nr), 2 * m * n * k, |j| {
        let cols = nr.min(n - j * nr);
        let (mut gb, mut ub, mut ab) = (vec![0f32; m * nr], vec![0f32; m * nr], vec![0f32; m * nr]);
        gj(j, Out(gb.as_mut_ptr()), nr);
        uj(j, Out(ub.as_mut_ptr()), nr);
        // Columns past `cols` hold zeros in both buffers (never stored), and are not copied out.
        act(&gb, &ub, &mut ab);
        for i in 0..m {
            // SAFETY: row i, columns j*nr..j*nr+cols of y: this job's alone.
            let row = unsafe { std::slice::from_raw_parts_mut(y.at(i * n + j * nr), cols) };
            row.copy_from_slice(&ab[i * nr..][..cols]);
        }
    });
}

/// Run `job` for 0..count, on rayon's threads unless the whole product is small (`flops`
/// multiply-adds below [`PARALLEL_MIN`]) or there is one job.
fn run_jobs(count: usize, flops: usize, job: impl Fn(usize) + Sync) {
    if flops < PARALLEL_MIN || count == 1 {
        (0..count).for_each(&job);
    } else {
        (0..count).into_par_iter().for_each(&job);
    }
}

/// The work of one panel j of an [m, k] x [k, n] product (every depth block, every row tile),
/// as a closure the threads share: `one(j, c, ldc)` writes panel j's columns of the m rows at c
/// (row stride ldc). SAFETY: x holds m * k values, `src` holds k depth steps of n columns
/// (packed for `isa` or row-major); each call's c holds m rows of ldc values, the panel's
/// columns in range.
unsafe fn panel_job(
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rand_vec(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// The definition: one fma chain per element, depth in order, from zero.
    fn chain(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0f32;
                for p in 0..k {
                    acc = x[i * k + p].mul_add(w[j * k + p], acc);
                }
                y[i * n + j] = acc;
            }
        }
        y
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn every_kernel_gives_the_fma_chain_bit_for_bit() {
        // Edges in both directions: rows not a multiple of any tile, columns past the last panel,
        // one row, one column, depth 1; and the default models' shapes.
        for (m, n, k) in [
            (1, 1, 1),
            (7, 33, 5),
            (9, 17, 64),
            (13, 576, 576),
            (3, 1536, 576),
            (17, 40, 1536),
            (40, 70, 600),
            (5, 3, 0),
            (2, 20, 257),
        ] {
            let x = rand_vec(1, m * k);
            let w = rand_vec(2, n * k);
            let want = bits(&chain(&x, &w, m, n, k));
            // w transposed: [k, n] row-major, for the unpacked product.
            let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
            for isa in Isa::available() {
                let mut y = vec![f32::NAN; m * n];
                matmul_packed(&x, m, &Packed::new(&w, n, k, isa), &mut y);
                assert_eq!(bits(&y), want, "{isa:?} packed, m {m} n {n} k {k}");
            }
            for isa in Isa::available() {
                let mut y = vec![f32::NAN; m * n];
                matmul_nn_on(isa, &x, m, k, &wt, n, &mut y);
                assert_eq!(bits(&y), want, "{isa:?} unpacked, m {m} n {n} k {k}");
            }
        }
    }

    /// Several weights over one input in one parallel loop give each weight's own product, bit
    /// for bit (small and large weights, a last panel cut short, rows past one tile).
    #[test]
    fn many_products_in_one_loop_equal_each_alone() {
        let (m, k) = (37, 300);
        let x = rand_vec(5, m * k);
        let isa = Isa::best();
        let ws: Vec<Packed> = [576, 40, 192]
            .iter()
            .enumerate()
            .map(|(i, &n)| Packed::new(&rand_vec(6 + i as u64, n * k), n, k, isa))
            .collect();
        let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![f32::NAN; m * w.n]).collect();
        let refs: Vec<&Packed> = ws.iter().collect();
        let mut ys: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
        matmul_packed_many(&x, m, &refs, &mut ys);
        for (w, got) in ws.iter().zip(&outs) {
            let mut want = vec![f32::NAN; m * w.n];
            matmul_packed(&x, m, w, &mut want);
            assert_eq!(bits(got), bits(&want), "n {}", w.n);
        }
    }

    /// A Q8_0 weight kept as int8 gives the product of candle's f32 dequantization of it, bit
    /// for bit, on every kernel: rows past one tile, a last panel cut short, depth past one block.
    #[test]
    fn q8_0_panels_give_the_dequantized_weights_product_bit_for_bit() {
        use candle_core::quantized::{GgmlDType, QTensor};
        use candle_core::{Device, Tensor};
        for (m, n, k) in [(1, 40, 32), (13, 70, 576), (3, 33, 640), (20, 100, 288)] {
            let w = Tensor::from_vec(rand_vec(8, n * k), (n, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
            let dense: Vec<f32> = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let x = rand_vec(9, m * k);
            let want = bits(&chain(&x, &dense, m, n, k));
            for isa in Isa::available() {
                let packed = Packed::from_q8_0(&q.data().unwrap(), n, k, isa).unwrap();
                assert!(packed.bytes() * 3 < n.next_multiple_of(isa.nr()) * k * 4, "{isa:?}: int8 storage");
                let mut y = vec![f32::NAN; m * n];
                matmul_packed(&x, m, &packed, &mut y);
                assert_eq!(bits(&y), want, "{isa:?} q8, m {m} n {n} k {k}");
            }
        }
        assert!(Packed::from_q8_0(&[0u8; 33], 1, 32, Isa::Scalar).is_err(), "a short block is refused");
        assert!(Packed::from_q8_0(&[], 1, 33, Isa::Scalar).is_err(), "a depth that is not a multiple of 32");
    }

    /// The gated product is act over the two products, bit for bit (a last panel cut short, rows
    /// past a tile).
    #[test]
    fn gated_product_is_act_of_the_two_products() {
        fn act(g: &[f32], u: &[f32], out: &mut [f32]) {
            for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
                *o = g / (1.0 + (-g).exp()) * u;
            }
        }
        let (m, n, k) = (19, 70, 96);
        let isa = Isa::best();
        let x = rand_vec(10, m * k);
        let (gw, uw) = (rand_vec(11, n * k), rand_vec(12, n * k));
        let (g, u) = (Packed::new(&gw, n, k, isa), Packed::new(&uw, n, k, isa));
        let (mut yg, mut yu, mut want) = (vec![0f32; m * n], vec![0f32; m * n], vec![0f32; m * n]);
        matmul_packed(&x, m, &g, &mut yg);
        matmul_packed(&x, m, &u, &mut yu);
        act(&yg, &yu, &mut want);
        let mut got = vec![f32::NAN; m * n];
        matmul_gated(&x, m, (&g, &u), act, &mut got);
        assert_eq!(bits(&got), bits(&want));
    }

    #[test]
    fn a_row_comes_out_the_same_whatever_the_row_count() {
        let (n, k) = (200, 96);
        let w = Packed::new(&rand_vec(3, n * k), n, k, Isa::best());
        let x = rand_vec(4, 70 * k);
        let mut alone = vec![0f32; n];
        matmul_packed(&x[..k], 1, &w, &mut alone);
        for m in [1, 2, 5, 8, 9, 16, 33, 70] {
            let mut y = vec![0f32; m * n];
            matmul_packed(&x[..m * k], m, &w, &mut y);
            assert_eq!(bits(&y[..n]), bits(&alone), "m {m}");
        }
    }
}
