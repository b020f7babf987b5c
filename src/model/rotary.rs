//! Rotary position embedding in fair-esm's `RotaryEmbedding` form: rotate_half (NeoX), over
//! the full head_dim, `inv_freq` read from the checkpoint, angles, sin and cos in f32.

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};

/// Host cos and sin tables, `[rows, block_len, head_dim]` flattened, in f32.
///
/// `positions` holds `rows * block_len` positions (`rows` is 1 when all blocks share them).
pub fn tables(inv_freq: &[f32], positions: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(positions.len() * 2 * half);
    let mut sin = Vec::with_capacity(positions.len() * 2 * half);
    for &p in positions {
        // Same op order as torch: t (f32) outer inv_freq (f32), then cat(freqs, freqs).
        for _ in 0..2 {
            for &f in inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
    (cos, sin)
}

/// Device cos/sin tables broadcastable against `[batch, heads, block_len, head_dim]`, in the
/// storage dtype and, for f32 attention in a mixed policy, in f32.
pub struct RotaryTables<B: Backend> {
    /// `[rows, 1, block_len, head_dim]` in the storage dtype, rows 1 or batch.
    pub cos: Tensor<B, 4>,
    /// `[rows, 1, block_len, head_dim]` in the storage dtype.
    pub sin: Tensor<B, 4>,
    /// The same in f32 (the same tensors when the storage dtype is f32).
    cos_f32: Tensor<B, 4>,
    sin_f32: Tensor<B, 4>,
}

impl<B: Backend> RotaryTables<B> {
    /// Builds the tables for `rows * block_len` positions, in f32 and cast to `dtype`.
    pub fn new(
        inv_freq: &[f32],
        positions: &[u32],
        rows: usize,
        block_len: usize,
        dtype: DType,
        device: &B::Device,
    ) -> Self {
        let head_dim = 2 * inv_freq.len();
        let (cos, sin) = tables(inv_freq, positions);
        let shape = [rows, 1, block_len, head_dim];
        let make = |v: Vec<f32>| Tensor::<B, 4>::from_data(TensorData::new(v, shape), device);
        let (cos_f32, sin_f32) = (make(cos), make(sin));
        Self {
            cos: cos_f32.clone().cast(dtype),
            sin: sin_f32.clone().cast(dtype),
            cos_f32,
            sin_f32,
        }
    }

    /// `x cos + rotate_half(x) sin`, with `rotate_half([x1, x2]) = [-x2, x1]`, with the
    /// tables of `x`'s dtype (f32 or the storage dtype).
    ///
    /// # Shapes
    /// `x: [batch, heads, block_len, head_dim]` -> same
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, heads, len, head_dim] = x.dims();
        let half = head_dim / 2;
        let (cos, sin) = if x.dtype() == DType::F32 {
            (&self.cos_f32, &self.sin_f32)
        } else {
            (&self.cos, &self.sin)
        };
        let x1 = x.clone().slice([0..batch, 0..heads, 0..len, 0..half]);
        let x2 = x
            .clone()
            .slice([0..batch, 0..heads, 0..len, half..head_dim]);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * cos.clone() + rotated * sin.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_repeat_the_frequencies_over_both_halves() {
        let (cos, sin) = tables(&[1.0, 0.5], &[0, 2]);
        assert_eq!(cos.len(), 8);
        assert_eq!(&cos[0..4], &[1.0; 4]);
        assert_eq!(&sin[0..4], &[0.0; 4]);
        assert_eq!(cos[4], 2.0f32.cos());
        assert_eq!(cos[5], 1.0f32.cos());
        assert_eq!(cos[6], cos[4]);
        assert_eq!(sin[7], sin[5]);
    }
}
