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

    fn check<S: Storage>(want: impl Fn(f32) -> f32) {
        for x in samples() {
            let (got, want) = (S::round(x), want(x));
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
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
    fn bf16_rounds_as_half_does() {
        check::<Bf16>(|x| half::bf16::from_f32(x).to_f32());
    }
}
