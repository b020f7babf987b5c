//! esmfuzz's CPU kernels: the parts of an ESM-2 layer that burn's CPU backend runs as many
//! separate passes (attention: gathers into padded blocks, rotary, `[batch, heads, L, L]`
//! scores, mask, softmax, products, scatters; GELU: five element-wise passes), each as one
//! pass over plain `f32` slices, spread over the cores with rayon.
//!
//! A separate crate so it is compiled with optimisation in every profile (the main crate's
//! `dev` profile is `opt-level = 1`, which does not vectorise loops). Each kernel keeps the
//! rounding points of the composition it replaces, in f32; only the order of summation inside
//! a reduction differs (see each kernel).

pub mod attention;
pub mod exp;
pub mod gelu;

/// Defines `$vis fn $name(args) -> ret` calling the `#[inline(always)]` function `$body`
/// compiled for AVX2 where this CPU has it (8 f32 lanes per vector), else as built (SSE2 on
/// x86-64). The arithmetic is the same either way: no fused multiply-adds are enabled, so only
/// the width of the vectors changes, never a result.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:ident) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: this CPU has AVX2 (checked above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use multiversion;
