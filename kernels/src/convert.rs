//! The hand-over between half tensors and the kernels' f32 slices: f16 and bf16 bits widened
//! to f32, and f32 values narrowed to bits, over the cores in chunks, each output written once
//! (no zero fill first). Every kernel call on a half tensor widens its inputs and narrows its
//! result; done on one thread with a zeroed buffer first, that was a seventh of an f16 pass.
//!
//! Widening is exact. Narrowing rounds to nearest, ties to even (the values the kernels hand
//! back are of the dtype already, so it is exact for them); NaN stays NaN (quiet), overflow
//! goes to infinity: `half`'s `from_f32` (tested against it).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::storage::{Bf16, Dtype, F16, Storage, f16c};

/// Values per task.
const CHUNK: usize = 1 << 14;

/// `bits` (f16 or bf16 bit patterns, as `dtype` says) as f32 values.
///
/// # Panics
/// When `dtype` is F32.
pub fn widen(bits: &[u16], dtype: Dtype) -> Vec<f32> {
    let widen_chunk: fn(&[u16], &mut [MaybeUninit<f32>]) = match dtype {
        Dtype::F16 if f16c() => widen_f16_hw,
        Dtype::F16 => |from, to| fill(from, to, f16_value),
        Dtype::Bf16 => |from, to| fill(from, to, |b| f32::from_bits((b as u32) << 16)),
        Dtype::F32 => panic!("widen takes f16 or bf16 bits, not f32"),
    };
    par_map(bits, widen_chunk)
}

/// `values` as `dtype`'s bit patterns (f16 or bf16), each rounded to nearest even.
///
/// # Panics
/// When `dtype` is F32.
pub fn narrow(values: &[f32], dtype: Dtype) -> Vec<u16> {
    let narrow_chunk: fn(&[f32], &mut [MaybeUninit<u16>]) = match dtype {
        Dtype::F16 if f16c() => narrow_f16_hw,
        Dtype::F16 => |from, to| fill(from, to, f16_bits),
        Dtype::Bf16 if avx2() => narrow_bf16_avx2,
        Dtype::Bf16 => |from, to| fill(from, to, bf16_bits),
        Dtype::F32 => panic!("narrow gives f16 or bf16 bits, not f32"),
    };
    par_map(values, narrow_chunk)
}

/// `from` mapped chunk by chunk, over the cores, into a vector written once.
fn par_map<A: Sync, T: Send>(from: &[A], chunk: fn(&[A], &mut [MaybeUninit<T>])) -> Vec<T> {
    let n = from.len();
    let mut out = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(CHUNK)
        .zip(from.par_chunks(CHUNK))
        .for_each(|(to, from)| chunk(from, to));
    // SAFETY: every one of the first `n` elements was written above (the chunks of `to` and
    // `from` pair up one to one and each `chunk` writes all of its `to`).
    unsafe { out.set_len(n) };
    out
}

/// `to[i] = f(from[i])` for every `i`.
#[inline(always)]
fn fill<A: Copy, T>(from: &[A], to: &mut [MaybeUninit<T>], f: impl Fn(A) -> T) {
    assert_eq!(from.len(), to.len());
    for (to, &x) in to.iter_mut().zip(from) {
        to.write(f(x));
    }
}

/// An f16 bit pattern's value, exactly: the exponent rebased by a multiplication by 2^112
/// (which also scales subnormals exactly); infinities and NaN keep their payload.
fn f16_value(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let magnitude = (h & 0x7fff) as u32;
    let value = if magnitude >= 0x7c00 {
        f32::from_bits(0x7f80_0000 | ((magnitude & 0x3ff) << 13))
    } else {
        f32::from_bits(magnitude << 13) * f32::from_bits((127 + 112) << 23)
    };
    f32::from_bits(value.to_bits() | sign)
}

/// `x` rounded to f16, as its bit pattern.
fn f16_bits(x: f32) -> u16 {
    let rounded = F16::round(x);
    let bits = rounded.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let magnitude = f32::from_bits(bits & 0x7fff_ffff);
    let rest = if magnitude.is_nan() {
        0x7e00 | ((bits >> 13) & 0x3ff) as u16
    } else if magnitude.is_infinite() {
        0x7c00
    } else if magnitude < 6.103_515_6e-5 {
        // A subnormal f16: a multiple of 2^-24 below 2^-14, exact in the cast.
        (magnitude * 16_777_216.0) as u16
    } else {
        ((((bits >> 23) & 0xff) - 112) << 10) as u16 | ((bits >> 13) & 0x3ff) as u16
    };
    sign | rest
}

/// `x` rounded to bf16, as its bit pattern (a NaN kept quiet).
pub(crate) fn bf16_bits(x: f32) -> u16 {
    if x.is_nan() {
        (x.to_bits() >> 16) as u16 | 0x0040
    } else {
        (Bf16::round(x).to_bits() >> 16) as u16
    }
}

/// [`f16_value`] eight at a time by F16C, the tail one by one.
fn widen_f16_hw(from: &[u16], to: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx,f16c")]
        fn convert(from: &[u16], to: &mut [MaybeUninit<f32>]) {
            use std::arch::x86_64::*;
            assert_eq!(from.len(), to.len());
            let whole = from.len() / 8 * 8;
            for (from, to) in from[..whole].chunks_exact(8).zip(to.chunks_exact_mut(8)) {
                // SAFETY: eight u16 read and eight f32 written, unaligned, inside the chunks.
                unsafe {
                    let h = _mm_loadu_si128(from.as_ptr().cast());
                    _mm256_storeu_ps(to.as_mut_ptr().cast(), _mm256_cvtph_ps(h));
                }
            }
            fill(&from[whole..], &mut to[whole..], f16_value);
        }
        // SAFETY: chosen only where `f16c()` holds.
        unsafe { convert(from, to) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    fill(from, to, f16_value)
}

/// [`f16_bits`] eight at a time by F16C (to nearest even), the tail one by one.
fn narrow_f16_hw(from: &[f32], to: &mut [MaybeUninit<u16>]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx,f16c")]
        fn convert(from: &[f32], to: &mut [MaybeUninit<u16>]) {
            use std::arch::x86_64::*;
            assert_eq!(from.len(), to.len());
            let whole = from.len() / 8 * 8;
            for (from, to) in from[..whole].chunks_exact(8).zip(to.chunks_exact_mut(8)) {
                // SAFETY: eight f32 read and eight u16 written, unaligned, inside the chunks.
                unsafe {
                    let v = _mm256_loadu_ps(from.as_ptr());
                    let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                    _mm_storeu_si128(to.as_mut_ptr().cast(), h);
                }
            }
            fill(&from[whole..], &mut to[whole..], f16_bits);
        }
        // SAFETY: chosen only where `f16c()` holds.
        unsafe { convert(from, to) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    fill(from, to, f16_bits)
}

/// Whether this CPU has AVX2, which [`narrow_bf16_avx2`] needs.
fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`bf16_bits`] eight at a time by AVX2 integer lanes, the tail one by one: the bits plus
/// 0x7fff plus the kept part's lowest bit, shifted down 16 (to nearest, ties to even;
/// overflow carries into infinity), a NaN's top half with its quiet bit. The scalar form
/// stayed scalar (its NaN branch), a twentieth of a bf16 pass on this project's AVX2 machine.
fn narrow_bf16_avx2(from: &[f32], to: &mut [MaybeUninit<u16>]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn convert(from: &[f32], to: &mut [MaybeUninit<u16>]) {
            use std::arch::x86_64::*;
            assert_eq!(from.len(), to.len());
            let whole = from.len() / 8 * 8;
            for (from, to) in from[..whole].chunks_exact(8).zip(to.chunks_exact_mut(8)) {
                // SAFETY: eight f32 read and eight u16 written, unaligned, inside the chunks.
                unsafe {
                    let bits = _mm256_loadu_si256(from.as_ptr().cast());
                    let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(1));
                    let bias = _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff));
                    let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(bits, bias));
                    let magnitude = _mm256_and_si256(bits, _mm256_set1_epi32(0x7fff_ffff));
                    let nan = _mm256_cmpgt_epi32(magnitude, _mm256_set1_epi32(0x7f80_0000));
                    let quiet =
                        _mm256_or_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(0x0040));
                    let half = _mm256_blendv_epi8(rounded, quiet, nan);
                    // Each 128-bit lane packs its four values (all below 2^16) twice; the
                    // permutation puts lane 0's four, then lane 1's, in the low 128 bits.
                    let packed = _mm256_packus_epi32(half, half);
                    let ordered = _mm256_permute4x64_epi64::<0b1000>(packed);
                    _mm_storeu_si128(to.as_mut_ptr().cast(), _mm256_castsi256_si128(ordered));
                }
            }
            fill(&from[whole..], &mut to[whole..], bf16_bits);
        }
        // SAFETY: chosen only where `avx2()` holds.
        unsafe { convert(from, to) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    fill(from, to, bf16_bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every f16 and bf16 bit pattern widens to `half`'s value and narrows back to its bits
    /// (NaN to a NaN), by the F16C path, the portable one and in the parallel chunks.
    #[test]
    fn every_half_value_round_trips_as_half_converts_it() {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        for dtype in [Dtype::F16, Dtype::Bf16] {
            let value = |b: u16| match dtype {
                Dtype::F16 => half::f16::from_bits(b).to_f32(),
                _ => half::bf16::from_bits(b).to_f32(),
            };
            let wide = widen(&all, dtype);
            let portable: Vec<f32> = all
                .iter()
                .map(|&b| match dtype {
                    Dtype::F16 => f16_value(b),
                    _ => f32::from_bits((b as u32) << 16),
                })
                .collect();
            let back = narrow(&wide, dtype);
            let back_portable: Vec<u16> = wide
                .iter()
                .map(|&x| match dtype {
                    Dtype::F16 => f16_bits(x),
                    _ => bf16_bits(x),
                })
                .collect();
            for (i, &b) in all.iter().enumerate() {
                let want = value(b);
                for (what, got) in [("widen", wide[i]), ("portable", portable[i])] {
                    if want.is_nan() {
                        assert!(got.is_nan(), "{dtype:?} {what} {b:#06x}");
                    } else {
                        assert_eq!(got.to_bits(), want.to_bits(), "{dtype:?} {what} {b:#06x}");
                    }
                }
                for (what, got) in [("narrow", back[i]), ("portable", back_portable[i])] {
                    if want.is_nan() {
                        assert!(value(got).is_nan(), "{dtype:?} {what} {b:#06x}");
                    } else {
                        assert_eq!(got, b, "{dtype:?} {what} {b:#06x}");
                    }
                }
            }
        }
    }

    /// Narrowing values that are not of the dtype rounds as `half` does: ties to even,
    /// subnormals, overflow to infinity.
    #[test]
    fn narrowing_rounds_as_half_does() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut values: Vec<f32> = (0..40_000)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let scale = [1e-7, 1e-5, 1.0, 300.0, 7e4, 3e38][i % 6];
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
            })
            .collect();
        values.extend([
            65504.0,
            65520.0,
            65519.99,
            5.960_464_5e-8,
            2.980_232_2e-8,
            -0.0,
        ]);
        for dtype in [Dtype::F16, Dtype::Bf16] {
            let want: Vec<u16> = values
                .iter()
                .map(|&x| match dtype {
                    Dtype::F16 => half::f16::from_f32(x).to_bits(),
                    _ => half::bf16::from_f32(x).to_bits(),
                })
                .collect();
            let portable: Vec<u16> = values
                .iter()
                .map(|&x| match dtype {
                    Dtype::F16 => f16_bits(x),
                    _ => bf16_bits(x),
                })
                .collect();
            assert_eq!(narrow(&values, dtype), want, "{dtype:?}");
            assert_eq!(portable, want, "{dtype:?} portable");
        }
    }
}
