//! `exp` for f32 lanes: Cephes' `expf` (range reduction by `ln 2` in two parts, a degree-6
//! polynomial, the exponent set by bit arithmetic), written without branches so that loops
//! over slices vectorise. Within 1 ulp of the correctly rounded result on the softmax domain
//! `x <= 0` down to `x = -87` (tested against f64 below); below that the result stays at
//! `exp(-87)`, about 1.6e-38, nothing beside a softmax sum of at least 1. NaN stays NaN.
//! `std`'s `f32::exp` is a scalar libm call, three quarters of a softmax's time.

/// `exp(x)` for `x <= 0` (softmax inputs after the max shift); `x > 0` is clamped to 0.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Rounds to the nearest integer for |v| < 2^22: 1.5 * 2^23.
    const ROUND: f32 = 12_582_912.0;
    const LOWEST: f32 = -87.0;
    let x = x.clamp(LOWEST, 0.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * (r * r) + r + 1.0;
    // 2^n for n in [-126, 0]: n + 127 in the exponent field of a normal f32, read from the
    // low mantissa bits of (n + 127) + 1.5 * 2^23 (bit operations only, so the loop
    // vectorises; a float-to-int cast saturates lane by lane).
    let biased = ((n + 127.0) + ROUND).to_bits() & 0xff;
    y * f32::from_bits(biased << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two positive f32.
    fn ulps(a: f32, b: f32) -> u32 {
        a.to_bits().abs_diff(b.to_bits())
    }

    #[test]
    fn within_one_ulp_of_the_rounded_exp_on_the_softmax_domain() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = (x as f64).exp() as f32;
            worst = worst.max(ulps(exp_nonpositive(x), want));
            x += 1.1e-4;
        }
        assert!(worst <= 1, "{worst} ulps");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-1e-30), 1.0);
        assert!(exp_nonpositive(-200.0) < 2e-38);
    }
}
