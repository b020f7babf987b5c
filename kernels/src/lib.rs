//! esmfuzz's CPU kernels: the parts of an ESM-2 layer that burn's CPU backend runs as many
//! separate passes (attention: gathers into padded blocks, rotary, `[batch, heads, L, L]`
//! scores, mask, softmax, products, scatters; GELU: five element-wise passes), each as one
//! pass over plain `f32` slices, spread over the cores with rayon.
//!
//! A separate crate so it is compiled with optimisation in every profile (the main crate's
//! `dev` profile is `opt-level = 1`, which does not vectorise loops). Each kernel keeps the
//! rounding points of the composition it replaces: it computes in f32 and rounds to the
//! storage dtype ([`storage::Storage`]: f32, f16, bf16) wherever the composition stores a
//! tensor; only the order of summation inside a reduction differs (see each kernel).

pub mod add;
pub mod amx;
pub mod attention;
pub mod convert;
pub mod erf;
pub mod exp;
pub mod gelu;
pub mod layer_norm;
pub mod storage;

/// Defines `$vis fn $name<S: Storage>(args) -> ret` calling the `#[inline(always)]` function
/// `$body::<S>` compiled for AVX2, FMA and F16C (which [`storage::F16Hw`] inlines) where this
/// CPU has them (8 f32 lanes per vector), else as built (SSE2 on x86-64). The arithmetic is
/// the same either way: Rust never fuses `a * b + c` on its own, so the only fused
/// multiply-adds are the explicit `mul_add`s (the attention kernel's dot products), which are
/// correctly rounded on every path (in software without FMA, slowly); only the width of the
/// vectors changes, never a result.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident<S: Storage>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:ident) => {
        $(#[$meta])*
        $vis fn $name<S: Storage>($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,f16c,fma")]
                unsafe fn avx2<S: Storage>($($arg: $ty),*) $(-> $ret)? {
                    $body::<S>($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("f16c")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: this CPU has AVX2, F16C and FMA (checked above).
                    return unsafe { avx2::<S>($($arg),*) };
                }
            }
            $body::<S>($($arg),*)
        }
    };
}
pub(crate) use multiversion;
