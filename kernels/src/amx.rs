//! Matrix products of f16 and bf16 values on Intel AMX tiles (`TDPBF16PS`): every product
//! exact, summed in f32, the sum rounded once to the storage dtype, which is the arithmetic
//! of burn-flex's half products (gemm widens both operands to f32 and accumulates in f32);
//! only the order of summation differs.
//!
//! A tile product multiplies bf16 pairs exactly (8-bit significands, 16-bit products) and
//! adds them to f32 accumulators, rounding to nearest even. bf16 operands go in as they are.
//! An f16 value (11-bit significand) is the exact sum of two bf16 values, `hi = bf16(x)` and
//! `lo = x - hi` (at most 3 significant bits), both normal in bf16 for every f16 (bf16 has
//! f32's exponent range), so an f16 product is the sum of four exact bf16 products:
//! `a b = ah bh + ah bl + al bh + al bl`; the reduction then runs over `4 k` exact terms in
//! f32 instead of `k`. The tiles treat subnormal f32/bf16 inputs (below 1.2e-38) as zero and
//! flush subnormal sums; such values never arise from f16 operands, whose smallest product
//! is 2^-48. A non-finite f16 operand makes its row or column NaN (its `lo` part is set to
//! zero, and inf x 0 is NaN), where the widened product may give an infinity: either way
//! non-finite.
//!
//! Tiles need the CPU (AMX-TILE, AMX-BF16), the kernel (tile state enabled in XCR0) and the
//! process's permission (Linux `arch_prctl(ARCH_REQ_XCOMP_PERM)`), all checked once by
//! [`available`]. The tile loop is inline assembly: Rust's AMX intrinsics are unstable.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::convert::bf16_bits;
use super::storage::{Dtype, round_slice};

/// Rows of a tile (and of the accumulators), and its width in bytes: 16 f32 accumulators, 32
/// bf16 values of `a`'s row, or 16 columns of `b` times one pair of its rows.
const TILE_ROWS: usize = 16;
const TILE_BYTES: usize = 64;
/// One block of the product: 2 x 2 accumulator tiles, 32 rows by 32 columns.
const BLOCK: usize = 2 * TILE_ROWS;
/// The reduction step of one tile product: 32 bf16 values.
const K_STEP: usize = TILE_BYTES / 2;

/// Whether this process can run the tile products (checked once: CPU, kernel, permission).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // Leaf 7 EDX: AMX-BF16 (bit 22), AMX-TILE (bit 24); leaf 1 ECX bit 27: OSXSAVE (xgetbv).
    let has_leaf_7 = __cpuid(0).eax >= 7;
    if !has_leaf_7 || __cpuid(1).ecx & (1 << 27) == 0 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
        return false;
    }
    // XCR0 bits 17 and 18: the kernel saves the tile configuration and data.
    #[target_feature(enable = "xsave")]
    fn xcr0() -> u64 {
        // SAFETY: OSXSAVE is set (checked above), so xgetbv may be executed.
        unsafe { std::arch::x86_64::_xgetbv(0) }
    }
    // SAFETY: this CPU has XSAVE: OSXSAVE cannot be set without it.
    let enabled = unsafe { xcr0() };
    if enabled & (0b11 << 17) != 0b11 << 17 {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with an integer argument; it only changes this process's permissions.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// `out = round(a b)` in `dtype` (F16 or Bf16): `a` and `b` hold values of `dtype` (as f32),
/// each product exact and the sums in f32, rounded to `dtype` once. Packs `b` for this call;
/// a weight used many times is packed once ([`PackedB`], [`matmul_packed`]).
///
/// # Shapes
/// `a: [m, k]`, `b: [k, n]`, `out: [m, n]`, all row-major.
///
/// # Panics
/// When [`available`] is false, `dtype` is F32, or a length does not match its shape.
pub fn matmul(a: &[f32], b: &[f32], out: &mut [f32], [m, k, n]: [usize; 3], dtype: Dtype) {
    assert_eq!(a.len(), m * k, "a is not [{m}, {k}]");
    matmul_packed(a, &PackedB::new(b, [k, n], dtype), out);
}

/// The right operand of tile products, packed once: its values' exact bf16 terms in the
/// layout `TDPBF16PS` reads, zero-padded to whole tiles. For f16 that is four terms (eight
/// bytes) per value, twice an f32 copy of the weight.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedB {
    /// `[width / 16, depth / 2, 16, 2]`.
    tiles: Vec<u16>,
    k: usize,
    n: usize,
    /// `k * terms`, rounded up to whole tile steps.
    depth: usize,
    /// `n` rounded up to whole blocks.
    width: usize,
    dtype: Dtype,
}

impl PackedB {
    /// `b`'s values (of `dtype`, F16 or Bf16, as f32) packed for [`matmul_packed`].
    ///
    /// # Shapes
    /// `b: [k, n]`, row-major.
    ///
    /// # Panics
    /// When `dtype` is F32 or `b`'s length is not `k * n`.
    pub fn new(b: &[f32], [k, n]: [usize; 2], dtype: Dtype) -> Self {
        assert_eq!(b.len(), k * n, "b is not [{k}, {n}]");
        let split = Split::of(dtype);
        let depth = (k * split.terms()).next_multiple_of(K_STEP);
        let width = n.next_multiple_of(BLOCK);
        Self {
            tiles: pack_b(b, [k, n], depth, width, split),
            k,
            n,
            depth,
            width,
            dtype,
        }
    }

    /// `[k, n]`, the operand's shape.
    pub fn dims(&self) -> [usize; 2] {
        [self.k, self.n]
    }

    /// The dtype whose values were packed.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Bytes the packed tiles hold.
    pub fn bytes(&self) -> usize {
        self.tiles.len() * std::mem::size_of::<u16>()
    }
}

/// Row blocks per task of [`matmul_packed`] at most: a task's rows of `a` (up to 128 rows of
/// `depth` terms) and one column block of `b` (`depth` x 64 bytes) stay in a core's L2 while
/// each column block is reused by every row block of the task.
const BLOCKS_PER_TASK: usize = 4;

/// `out = round(a b)` in `b`'s dtype, `b` packed by [`PackedB::new`] (see [`matmul`]).
///
/// # Shapes
/// `a: [m, k]`, `b: [k, n]`, `out: [m, n]`, all row-major.
///
/// # Panics
/// When [`available`] is false, or `a` or `out` does not hold `m` rows of `k` or `n` values.
pub fn matmul_packed(a: &[f32], b: &PackedB, out: &mut [f32]) {
    assert!(available(), "AMX tiles are not available in this process");
    let ([k, n], split) = (b.dims(), Split::of(b.dtype));
    if n == 0 {
        return;
    }
    let m = out.len() / n;
    assert_eq!(out.len(), m * n, "out is not [m, {n}]");
    assert_eq!(a.len(), m * k, "a is not [{m}, {k}]");
    if m == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    // Enough tasks for every core where there are rows for them.
    let blocks = m.div_ceil(BLOCK);
    let per_task = blocks
        .div_ceil(rayon::current_num_threads().max(1))
        .clamp(1, BLOCKS_PER_TASK);
    out.par_chunks_mut(per_task * BLOCK * n)
        .zip(a.par_chunks(per_task * BLOCK * k))
        .for_each(|(out_rows, a_rows)| {
            let rows = a_rows.len() / k;
            let a_tiles = pack_a(a_rows, [rows, k], b.depth, split);
            // SAFETY: `available()` holds (asserted above); `a_tiles` holds whole row blocks of
            // `b.depth` terms, `b.tiles` whole column blocks, as `block_products` reads them.
            unsafe { block_products(&a_tiles, b, out_rows, rows) };
            round_slice(out_rows, b.dtype);
        });
}

/// How a value of the storage dtype becomes exact bf16 terms.
#[derive(Clone, Copy)]
enum Split {
    /// A bf16 value is its own term.
    Whole,
    /// An f16 value is `hi + lo`; `a`'s terms are laid out `hi hi lo lo` against `b`'s
    /// `hi lo hi lo`, so four consecutive products make `a b`.
    HiLo,
}

impl Split {
    fn of(dtype: Dtype) -> Self {
        match dtype {
            Dtype::Bf16 => Split::Whole,
            Dtype::F16 => Split::HiLo,
            Dtype::F32 => panic!("the tile products take f16 or bf16 values, not f32"),
        }
    }

    fn terms(self) -> usize {
        match self {
            Split::Whole => 1,
            Split::HiLo => 4,
        }
    }

    /// `x`'s bf16 terms in the order of `a` (`for_a`) or of `b`, written to `to`.
    fn write(self, x: f32, for_a: bool, to: &mut [u16]) {
        match self {
            Split::Whole => to[0] = bf16_bits_exact(x),
            Split::HiLo => {
                let (hi, lo) = hi_lo(x);
                // A fixed-size store (a slice copy of four would be a memcpy call per value).
                let to: &mut [u16; 4] = (&mut to[..4])
                    .try_into()
                    .unwrap_or_else(|_| unreachable!("four terms"));
                *to = if for_a {
                    [hi, hi, lo, lo]
                } else {
                    [hi, lo, hi, lo]
                };
            }
        }
    }
}

/// The bits of a value that is a bf16 value already (its low 16 bits are zero).
fn bf16_bits_exact(x: f32) -> u16 {
    (x.to_bits() >> 16) as u16
}

/// `x = hi + lo` exactly, `hi` the nearest bf16 (ties to even); `lo` is zero where `x` is not
/// finite (else inf - inf would make every product NaN even against a zero of `b`'s hi).
fn hi_lo(x: f32) -> (u16, u16) {
    let hi_bits = bf16_bits(x);
    let hi = f32::from_bits((hi_bits as u32) << 16);
    let lo = if hi.is_finite() { x - hi } else { 0.0 };
    (hi_bits, bf16_bits_exact(lo))
}

/// `a`'s rows as bf16 terms, `depth` per row (zero past `k * terms`), and as many zero rows
/// as make whole blocks, laid out tile by tile: each 16 rows are `depth / 32` tiles of 16 rows
/// by 32 terms, each tile's 1,024 bytes contiguous (so a tile load reads one contiguous
/// kilobyte, as for `b`, not 16 rows a whole row apart).
///
/// # Shapes
/// `a: [rows, k]` -> `[rows.next_multiple_of(BLOCK) / 16, depth / 32, 16, 32]`
fn pack_a(a: &[f32], [rows, k]: [usize; 2], depth: usize, split: Split) -> Vec<u16> {
    let mut packed = vec![0u16; rows.next_multiple_of(BLOCK) * depth];
    let tile_len = TILE_ROWS * K_STEP;
    for (r, row) in a.chunks(k).take(rows).enumerate() {
        let tiles = &mut packed[(r / TILE_ROWS) * TILE_ROWS * depth..][..TILE_ROWS * depth];
        let offset = (r % TILE_ROWS) * K_STEP;
        // Term `t` of this row: tile `t / 32`, row `r % 16`, column `t % 32`.
        let values_per_step = K_STEP / split.terms();
        for (step, values) in row.chunks(values_per_step).enumerate() {
            let to = &mut tiles[step * tile_len + offset..][..K_STEP];
            for (to, &x) in to.chunks_exact_mut(split.terms()).zip(values) {
                split.write(x, true, to);
            }
        }
    }
    packed
}

/// `b`'s columns as tiles: for each 16 columns, the pairs of consecutive terms of the
/// reduction (`[depth / 2, 16, 2]`, the layout `TDPBF16PS` reads), zero past `n` and past
/// `k * terms`.
///
/// # Shapes
/// `b: [k, n]` -> `[width / 16, depth / 2, 16, 2]`
fn pack_b(b: &[f32], [k, n]: [usize; 2], depth: usize, width: usize, split: Split) -> Vec<u16> {
    let terms = split.terms();
    let mut packed = vec![0u16; width * depth];
    packed
        .par_chunks_mut(TILE_ROWS * depth)
        .enumerate()
        .for_each(|(tile, to)| {
            let mut column_terms = vec![0u16; k * terms];
            for column in (tile * TILE_ROWS..(tile + 1) * TILE_ROWS).filter(|&c| c < n) {
                for (row, to) in column_terms.chunks_mut(terms).enumerate() {
                    split.write(b[row * n + column], false, to);
                }
                let lane = column % TILE_ROWS;
                for (pair, values) in column_terms.chunks(2).enumerate() {
                    let at = (pair * TILE_ROWS + lane) * 2;
                    to[at..at + values.len()].copy_from_slice(values);
                }
            }
        });
    packed
}

/// The tile configuration: palette 1, tiles 0-7 all 16 rows of 64 bytes (0-3 accumulators,
/// 4-5 rows of `a`, 6-7 columns of `b`).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    fn all_full() -> Self {
        let mut config = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            bytes_per_row: [0; 16],
            rows: [0; 16],
        };
        config.bytes_per_row[..8].fill(TILE_BYTES as u16);
        config.rows[..8].fill(TILE_ROWS as u8);
        config
    }
}

/// `out = a_tiles b` (unrounded f32 sums) for `rows` rows: column block by column block of
/// `b`, each reused by every row block of `a_tiles` while it is in cache, the 32 x 32 sums of
/// one block stored to a scratch block and copied to `out` (which has no padding rows or
/// columns).
///
/// # Shapes
/// `a_tiles`: [`pack_a`]'s tiles of `rows.next_multiple_of(BLOCK)` rows of `b.depth` terms, `out: [rows, b.n]`
///
/// # Safety
/// [`available`] must hold.
unsafe fn block_products(a_tiles: &[u16], b: &PackedB, out: &mut [f32], rows: usize) {
    let (depth, n) = (b.depth, b.n);
    assert!(depth.is_multiple_of(K_STEP) && b.width.is_multiple_of(BLOCK));
    assert_eq!(a_tiles.len(), rows.next_multiple_of(BLOCK) * depth);
    assert_eq!(b.tiles.len(), b.width * depth);
    assert_eq!(out.len(), rows * n);
    let config = TileConfig::all_full();
    let mut sums = [0.0f32; BLOCK * BLOCK];
    let b_tile_len = TILE_ROWS * depth;
    // SAFETY: the configuration is valid for palette 1; the caller holds `available()`.
    unsafe { std::arch::asm!("ldtilecfg [{0}]", in(reg) &config, options(nostack, readonly)) };
    for column in (0..b.width).step_by(BLOCK) {
        let tile = column / TILE_ROWS;
        let b_block = &b.tiles[tile * b_tile_len..(tile + 2) * b_tile_len];
        for first in (0..rows).step_by(BLOCK) {
            let a_block = &a_tiles[first * depth..(first + BLOCK) * depth];
            // SAFETY: the blocks have the lengths `block_product` reads (checked above).
            unsafe { block_product(a_block, b_block, depth, &mut sums) };
            let columns = BLOCK.min(n - column);
            for (r, sum) in sums.chunks_exact(BLOCK).take(rows - first).enumerate() {
                let at = (first + r) * n + column;
                out[at..at + columns].copy_from_slice(&sum[..columns]);
            }
        }
    }
    // SAFETY: releases this thread's tile state.
    unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
}

/// `sums = a_block b_block`: 32 rows of `depth` terms against 32 columns (two tiles of `b`),
/// on four accumulator tiles, stored row-major `[32, 32]`.
///
/// # Safety
/// The tile configuration of [`TileConfig::all_full`] is loaded on this thread; `a_block` is
/// two row tiles of `[depth / 32, 16, 32]` ([`pack_a`]), `b_block` two column tiles of
/// `[depth / 2, 16, 2]`, `depth` a multiple of 32.
#[inline(always)]
unsafe fn block_product(
    a_block: &[u16],
    b_block: &[u16],
    depth: usize,
    sums: &mut [f32; BLOCK * BLOCK],
) {
    debug_assert!(depth.is_multiple_of(K_STEP) && depth > 0);
    debug_assert_eq!(a_block.len(), BLOCK * depth);
    debug_assert_eq!(b_block.len(), BLOCK * depth);
    let a0 = a_block.as_ptr();
    let a1 = a_block[TILE_ROWS * depth..].as_ptr();
    let b0 = b_block.as_ptr();
    let b1 = b_block[TILE_ROWS * depth..].as_ptr();
    let c = sums.as_mut_ptr();
    // SAFETY: every load stays inside its block: each of the four tiles (two of `a`, two of
    // `b`) is `depth / 32` steps of 1,024 contiguous bytes (16 rows of 64), read one step at a
    // time; the stores write 32 rows of 32 f32 (128 bytes apart), all of `sums`.
    unsafe {
        std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a0} + {a_stride}]",
            "tileloadd tmm5, [{a1} + {a_stride}]",
            "tileloadd tmm6, [{b0} + {b_stride}]",
            "tileloadd tmm7, [{b1} + {b_stride}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 1024",
            "add {a1}, 1024",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {steps}",
            "jnz 2b",
            "tilestored [{c} + {c_stride}], tmm0",
            "tilestored [{c} + {c_stride} + 64], tmm1",
            "add {c}, 2048",
            "tilestored [{c} + {c_stride}], tmm2",
            "tilestored [{c} + {c_stride} + 64], tmm3",
            a0 = inout(reg) a0 => _,
            a1 = inout(reg) a1 => _,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            c = inout(reg) c => _,
            steps = inout(reg) depth / K_STEP => _,
            a_stride = in(reg) TILE_BYTES,
            b_stride = in(reg) TILE_BYTES,
            c_stride = in(reg) BLOCK * 4,
            options(nostack),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in (-scale, scale) rounded to `dtype` (a xorshift generator).
    fn values(n: usize, seed: u64, scale: f32, dtype: Dtype) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
                dtype.round((2.0 * unit - 1.0) * scale)
            })
            .collect()
    }

    #[test]
    fn hi_lo_is_exact_for_every_f16() {
        for bits in 0..=u16::MAX {
            let x = half::f16::from_bits(bits).to_f32();
            let (hi, lo) = hi_lo(x);
            let (hi, lo) = (
                f32::from_bits((hi as u32) << 16),
                f32::from_bits((lo as u32) << 16),
            );
            if x.is_finite() {
                assert_eq!(hi + lo, x, "f16 bits {bits:#06x}");
                assert!(
                    lo.abs() <= hi.abs() / 128.0,
                    "f16 bits {bits:#06x}: lo {lo} hi {hi}"
                );
            } else {
                assert!(!hi.is_finite() && lo == 0.0, "f16 bits {bits:#06x}");
            }
        }
    }

    /// Every element within the f32 accumulation bound of the exact product (f64), then
    /// rounded as `dtype` rounds; shapes with tails in every dimension.
    #[test]
    fn tile_products_match_f64_within_the_f32_accumulation_bound() {
        if !available() {
            eprintln!("AMX tiles not available on this CPU: the tile product is not run here");
            return;
        }
        for (dtype, terms) in [(Dtype::Bf16, 1), (Dtype::F16, 4)] {
            for (case, [m, k, n]) in [
                [1, 1, 1],
                [33, 70, 47],
                [64, 320, 96],
                [5, 1280, 33],
                [300, 40, 65],
            ]
            .into_iter()
            .enumerate()
            {
                let a = values(m * k, 2 * case as u64 + 1, 2.0, dtype);
                let b = values(k * n, 2 * case as u64 + 2, 0.5, dtype);
                let mut out = vec![f32::NAN; m * n];
                matmul(&a, &b, &mut out, [m, k, n], dtype);
                let mut exact_rounding_differs = 0;
                for i in 0..m {
                    for j in 0..n {
                        let (mut exact, mut magnitude) = (0.0f64, 0.0f64);
                        for l in 0..k {
                            let p = a[i * k + l] as f64 * b[l * n + j] as f64;
                            exact += p;
                            magnitude += p.abs();
                        }
                        // f32 accumulation of terms * k exact terms, then one rounding.
                        let bound = (terms * k + 1) as f64 * f32::EPSILON as f64 / 2.0 * magnitude;
                        let rounded_exact = dtype.round(exact as f32);
                        let got = out[i * n + j] as f64;
                        let lower = dtype.round((exact - bound) as f32) as f64;
                        let upper = dtype.round((exact + bound) as f32) as f64;
                        assert!(
                            lower <= got && got <= upper,
                            "{dtype:?} [{m}, {k}, {n}] at ({i}, {j}): {got} outside [{lower}, {upper}]"
                        );
                        exact_rounding_differs += usize::from(got as f32 != rounded_exact);
                    }
                }
                // The sums are f32-accurate, so the half rounding almost always agrees.
                assert!(
                    exact_rounding_differs * 50 <= m * n,
                    "{dtype:?} [{m}, {k}, {n}]: {exact_rounding_differs} of {} differ from the \
                     rounded exact product",
                    m * n
                );
            }
        }
    }
}
