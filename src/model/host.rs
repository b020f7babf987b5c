//! Device tensors to host memory: the model wing's own way to read a result back (the batch
//! wing's `HostStates` and the measurements build on it).

use burn::tensor::{DType, Tensor, backend::Backend};

/// The values of `t` on the host, widened to f32, in row-major order.
pub fn to_host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_else(|e| unreachable!("an f32 tensor yields f32 data: {e:?}"))
}
