//! Device tensors to host memory: the model wing's own way to read a result back (the batch
//! wing's `HostStates` and the measurements build on it).
//!
//! A tensor is read in the dtype it is stored in and widened to f32 on the host, not cast on
//! the device first: for the half policies that moves half the bytes over PCIe, spares a cast
//! kernel, and lets a reader that only reduces the values (pooling) skip the f32 copy
//! altogether. Widening f16 and bf16 to f32 is exact, so the values are those a device-side
//! cast gives.

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use half::{bf16, f16, slice::HalfFloatSliceExt};
use rayon::prelude::*;

/// Values widened per parallel task (large enough that a task outweighs its scheduling).
const WIDEN_CHUNK: usize = 1 << 16;

/// A storage type the host widens to f32 exactly: f32 itself, f16 and bf16.
pub trait Widen: Copy + Send + Sync {
    /// `self` as f32 (exact).
    fn widen(self) -> f32;
    /// Every value of `src` widened into `dst` (same length).
    fn widen_into(src: &[Self], dst: &mut [f32]);
}

impl Widen for f32 {
    fn widen(self) -> f32 {
        self
    }
    fn widen_into(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl Widen for f16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
    fn widen_into(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
}

impl Widen for bf16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
    fn widen_into(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
}

/// A borrowed view of host values in their storage type.
#[derive(Debug, Clone, Copy)]
pub enum Stored<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

/// Runs `$body` with `$values` (a [`Stored`]) bound to `$slice` as the typed slice, whichever
/// storage type it holds (`$body` is generic over [`Widen`]).
#[macro_export]
macro_rules! with_stored {
    ($values:expr, $slice:ident => $body:expr) => {
        match $values {
            $crate::model::Stored::F32($slice) => $body,
            $crate::model::Stored::F16($slice) => $body,
            $crate::model::Stored::BF16($slice) => $body,
        }
    };
}

/// One read of a float tensor to the host, kept in the dtype it was stored in (f32, f16 or
/// bf16; any other float dtype is converted to f32 on the host).
#[derive(Debug, Clone)]
pub struct HostTensor {
    data: TensorData,
}

impl HostTensor {
    /// Reads `t` (waits for whatever computes it).
    pub fn read<B: Backend, const D: usize>(t: Tensor<B, D>) -> Self {
        Self::from_data(t.into_data())
    }

    fn from_data(data: TensorData) -> Self {
        let data = match data.dtype {
            DType::F32 | DType::F16 | DType::BF16 => data,
            _ => data.convert::<f32>(),
        };
        Self { data }
    }

    /// The tensor's shape.
    pub fn dims(&self) -> &[usize] {
        &self.data.shape
    }

    /// The values, row-major, in their storage type.
    pub fn values(&self) -> Stored<'_> {
        let view = match self.data.dtype {
            DType::F16 => self.data.as_slice().map(Stored::F16),
            DType::BF16 => self.data.as_slice().map(Stored::BF16),
            _ => self.data.as_slice().map(Stored::F32),
        };
        // burn's host buffers are allocated aligned for their dtype, and `from_data` leaves
        // only f32, f16 and bf16.
        view.unwrap_or_else(|e| {
            unreachable!("host data of a float tensor views as its dtype: {e:?}")
        })
    }

    /// The values widened to f32, row-major (in parallel over the host's cores).
    pub fn to_f32(&self) -> Vec<f32> {
        with_stored!(self.values(), values => widened(values))
    }
}

/// `values` widened to f32, chunks in parallel.
fn widened<T: Widen>(values: &[T]) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    out.par_chunks_mut(WIDEN_CHUNK)
        .zip(values.par_chunks(WIDEN_CHUNK))
        .for_each(|(dst, src)| T::widen_into(src, dst));
    out
}

/// The values of `t` on the host, widened to f32, in row-major order.
pub fn to_host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    HostTensor::read(t).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_values_widen_exactly_and_other_dtypes_become_f32() {
        let halves: Vec<f16> = [1.5f32, -0.0, 65504.0, 6e-8, f32::INFINITY]
            .iter()
            .map(|&v| f16::from_f32(v))
            .collect();
        let read = HostTensor::from_data(TensorData::new(halves.clone(), [5]));
        assert!(matches!(read.values(), Stored::F16(_)));
        let widened = read.to_f32();
        for (h, w) in halves.iter().zip(&widened) {
            assert_eq!(h.to_f32().to_bits(), w.to_bits());
        }
        let long: Vec<bf16> = (0..3 * WIDEN_CHUNK + 7)
            .map(|i| bf16::from_f32(i as f32 * 0.37 - 5.0))
            .collect();
        let read = HostTensor::from_data(TensorData::new(long.clone(), [long.len()]));
        let widened = read.to_f32();
        assert_eq!(widened.len(), long.len());
        assert!(long.iter().zip(&widened).all(|(b, w)| b.to_f32() == *w));

        let doubles = HostTensor::from_data(TensorData::new(vec![0.1f64, 2.0], [2]));
        assert!(matches!(doubles.values(), Stored::F32(_)));
        assert_eq!(doubles.to_f32(), vec![0.1f64 as f32, 2.0]);
        assert_eq!(doubles.dims(), &[2]);
    }
}
