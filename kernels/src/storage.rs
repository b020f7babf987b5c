//! The storage dtypes the kernels round to: f32 (no rounding), f16 and bf16, each as the f32
//! value `half`'s `from_f32(x).to_f32()` gives (round to nearest, ties to even; overflow to
//! infinity; NaN stays NaN), computed with bit operations and selects only, so that loops
//! over slices vectorise. A kernel generic over [`Storage`] rounds where the composition of
//! burn ops it replaces stores a tensor in that dtype.

/// The storage dtype a kernel call rounds to. The public kernels take this (not a type
/// parameter) so that they are instantiated here, in this optimised crate, not in the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

impl Dtype {
    /// `x` rounded to this dtype, as f32.
    pub fn round(self, x: f32) -> f32 {
        match self {
            Dtype::F32 => F32::round(x),
            Dtype::F16 => F16::round(x),
            Dtype::Bf16 => Bf16::round(x),
        }
    }
}

/// Every value of `x` rounded to `dtype`, in place.
pub fn round_slice(x: &mut [f32], dtype: Dtype) {
    match dtype {
        Dtype::F32 => {}
        Dtype::F16 => round_part::<F16>(x),
        Dtype::Bf16 => round_part::<Bf16>(x),
    }
}

crate::multiversion! {
    fn round_part<S: Storage>(x: &mut [f32]) => round_body
}

#[inline(always)]
fn round_body<S: Storage>(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = S::round(*v);
    }
}

/// A storage dtype: `round` maps an f32 to the nearest value the dtype holds, as f32.
pub trait Storage: Copy + Send + Sync + 'static {
    fn round(x: f32) -> f32;

    /// [`Storage::round`] of eight values (one AVX vector).
    #[inline(always)]
    fn round_lanes(x: [f32; 8]) -> [f32; 8] {
        x.map(Self::round)
    }
}

/// f32 storage: nothing to round.
#[derive(Debug, Clone, Copy)]
pub struct F32;

/// IEEE binary16.
#[derive(Debug, Clone, Copy)]
pub struct F16;

/// bfloat16 (f32's exponent, 8 significant bits).
#[derive(Debug, Clone, Copy)]
pub struct Bf16;

impl Storage for F32 {
    #[inline(always)]
    fn round(x: f32) -> f32 {
        x
    }
}

impl Storage for F16 {
    #[inline(always)]
    fn round(x: f32) -> f32 {
        /// The smallest normal f16, 2^-14.
        const MIN_NORMAL: f32 = 6.103_515_6e-5;
        const MAX: f32 = 65504.0;
        let bits = x.to_bits();
        let magnitude = bits & 0x7fff_ffff;
        let a = f32::from_bits(magnitude);
        // Normal f16: the f32 significand rounded to 10 bits, ties to even.
        let normal = f32::from_bits((magnitude + 0x0fff + ((magnitude >> 13) & 1)) & !0x1fff);
        // Subnormal f16: multiples of 2^-24, the spacing of f32 values in [0.5, 1).
        let subnormal = (a + 0.5) - 0.5;
        let rounded = if a < MIN_NORMAL { subnormal } else { normal };
        let rounded = if rounded > MAX {
            f32::INFINITY
        } else {
            rounded
        };
        let rounded = if a.is_nan() { f32::NAN } else { rounded };
        f32::from_bits(rounded.to_bits() | (bits & 0x8000_0000))
    }
}

/// IEEE binary16 rounded by the F16C conversions (`vcvtps2ph` to nearest even, then
/// `vcvtph2ps`), eight at a time: the same values as [`F16`] (NaN stays NaN), two instructions
/// instead of a dozen. Only for a CPU with F16C (see [`f16c`]).
#[derive(Debug, Clone, Copy)]
pub struct F16Hw;

/// Whether this CPU has the F16C conversions (and AVX), which [`F16Hw`] needs.
pub fn f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl Storage for F16Hw {
    #[inline(always)]
    fn round(x: f32) -> f32 {
        F16::round(x)
    }

    #[inline(always)]
    fn round_lanes(x: [f32; 8]) -> [f32; 8] {
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx,f16c")]
            fn convert(x: [f32; 8]) -> [f32; 8] {
                use std::arch::x86_64::*;
                // SAFETY: `x` is eight f32; unaligned load and store.
                unsafe {
                    let v = _mm256_loadu_ps(x.as_ptr());
                    let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                    let mut out = [0.0f32; 8];
                    _mm256_storeu_ps(out.as_mut_ptr(), _mm256_cvtph_ps(h));
                    out
                }
            }
            // SAFETY: F16Hw is used only where `f16c()` holds.
            unsafe { convert(x) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            x.map(F16::round)
        }
    }
}

impl Storage for Bf16 {
    #[inline(always)]
    fn round(x: f32) -> f32 {
        let bits = x.to_bits();
        let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) & 0xffff_0000;
        if x.is_nan() {
            x
        } else {
            f32::from_bits(rounded)
        }
    }

    /// The same rounding on the bits, four lanes per SSE2 instruction (every x86-64 has
    /// SSE2; the compiler leaves the per-value form scalar here).
    #[inline(always)]
    fn round_lanes(x: [f32; 8]) -> [f32; 8] {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::*;
            let mut out = [0.0f32; 8];
            for (x, o) in x.chunks_exact(4).zip(out.chunks_exact_mut(4)) {
                // SAFETY: SSE2 is part of x86-64; four f32 read and written, unaligned.
                unsafe {
                    let bits = _mm_loadu_si128(x.as_ptr().cast());
                    let odd = _mm_and_si128(_mm_srli_epi32::<16>(bits), _mm_set1_epi32(1));
                    let bias = _mm_add_epi32(odd, _mm_set1_epi32(0x7fff));
                    let rounded = _mm_and_si128(
                        _mm_add_epi32(bits, bias),
                        _mm_set1_epi32(0xffff_0000_u32 as i32),
                    );
                    let magnitude = _mm_and_si128(bits, _mm_set1_epi32(0x7fff_ffff));
                    let nan = _mm_cmpgt_epi32(magnitude, _mm_set1_epi32(0x7f80_0000));
                    let kept =
                        _mm_or_si128(_mm_and_si128(nan, bits), _mm_andnot_si128(nan, rounded));
                    _mm_storeu_si128(o.as_mut_ptr().cast(), kept);
                }
            }
            out
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            x.map(Self::round)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every 4099th f32 bit pattern and the edges: zeros, subnormal and normal boundaries,
    /// halfway cases, the largest finite values, infinities and NaN.
    fn samples() -> impl Iterator<Item = f32> {
        let edges = [
            0.0f32,
            -0.0,
            5.960_464_5e-8,
            2.980_232_2e-8,
            2.980_233e-8,
            6.103_515_6e-5,
            6.097_555e-5,
            65504.0,
            65519.99,
            65520.0,
            1e9,
            f32::MAX,
            f32::MIN_POSITIVE,
            1.000_000_1,
            1.0 + 1.0 / 2048.0,
            1.0 + 3.0 / 2048.0,
            f32::INFINITY,
            f32::NAN,
        ];
        let strided = (0..=u32::MAX / 4099).map(|i| f32::from_bits(i * 4099));
        edges.into_iter().flat_map(|x| [x, -x]).chain(strided)
    }

    /// The same f32, or both NaN.
    fn same(got: f32, want: f32) -> bool {
        got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan())
    }

    fn check<S: Storage>(want: impl Fn(f32) -> f32) {
        for x in samples() {
            let (got, want) = (S::round(x), want(x));
            assert!(
                same(got, want),
                "{x:e} ({:#010x}): {got:e} against {want:e}",
                x.to_bits()
            );
        }
    }

    #[test]
    fn f16_rounds_as_half_does() {
        check::<F16>(|x| half::f16::from_f32(x).to_f32());
    }

    #[test]
    fn f16_lanes_round_as_half_does() {
        if !f16c() {
            eprintln!("no F16C on this CPU: F16Hw is not used here");
            return;
        }
        let values: Vec<f32> = samples().collect();
        let mut compared = 0;
        for chunk in values.chunks_exact(8) {
            let lanes: [f32; 8] = chunk.try_into().unwrap();
            for (x, got) in lanes.iter().zip(F16Hw::round_lanes(lanes)) {
                let want = half::f16::from_f32(*x).to_f32();
                assert!(same(got, want), "{x:e}: {got:e} against {want:e}");
                compared += 1;
            }
        }
        assert!(compared > 1_000_000, "{compared}");
    }

    #[test]
    fn bf16_rounds_as_half_does() {
        check::<Bf16>(|x| half::bf16::from_f32(x).to_f32());
        for x in samples() {
            let (got, want) = (Bf16::round_lanes([x; 8])[3], Bf16::round(x));
            assert!(same(got, want), "{x:e}");
        }
    }
}
