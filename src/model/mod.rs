//! ESM-2 in burn: configuration, precision policies, weights, loading and the forward pass.

pub mod attention;
pub mod config;
pub mod esm2;
pub mod layer;
pub mod layout;
pub mod load;
pub mod ops;
pub mod precision;
pub mod rotary;
pub mod weights;

use burn::tensor::{Tensor, TensorData, backend::Backend};

use precision::ComputePlan;
use weights::{HostTensor, LinearWeights, NormWeights};

pub use config::EsmConfig;
pub use esm2::{Esm2, EsmOutput};
pub use precision::{BackendKind, Precision};
pub use weights::EsmWeights;

/// Uploads a host tensor and casts it to the plan's storage dtype.
fn to_device<B: Backend, const D: usize>(
    t: &HostTensor,
    plan: &ComputePlan,
    device: &B::Device,
) -> Tensor<B, D> {
    let shape: [usize; D] = t
        .shape
        .clone()
        .try_into()
        .unwrap_or_else(|s: Vec<usize>| panic!("expected a rank-{D} tensor, got shape {s:?}"));
    Tensor::<B, D>::from_data(TensorData::new(t.data.clone(), shape), device).cast(plan.dtype())
}

/// A `Linear` on the device, weight stored transposed for `x @ w`.
pub struct DeviceLinear<B: Backend> {
    /// `[in, out]`.
    pub weight_t: Tensor<B, 2>,
    /// `[out]`.
    pub bias: Tensor<B, 1>,
}

impl<B: Backend> DeviceLinear<B> {
    /// # Shapes
    /// `x: [..., in]` -> `[..., out]`
    pub fn forward<const D: usize>(&self, plan: &ComputePlan, x: Tensor<B, D>) -> Tensor<B, D> {
        ops::linear(plan, x, &self.weight_t, &self.bias)
    }
}

fn device_linear<B: Backend>(
    w: &LinearWeights,
    plan: &ComputePlan,
    device: &B::Device,
) -> DeviceLinear<B> {
    DeviceLinear {
        weight_t: to_device(&w.weight.transposed(), plan, device),
        bias: to_device(&w.bias, plan, device),
    }
}

/// A `LayerNorm` on the device.
pub struct DeviceNorm<B: Backend> {
    /// `[hidden]`.
    pub weight: Tensor<B, 1>,
    /// `[hidden]`.
    pub bias: Tensor<B, 1>,
}

impl<B: Backend> DeviceNorm<B> {
    fn new(w: &NormWeights, plan: &ComputePlan, device: &B::Device) -> Self {
        Self {
            weight: to_device(&w.weight, plan, device),
            bias: to_device(&w.bias, plan, device),
        }
    }

    /// # Shapes
    /// `x: [..., hidden]` -> `[..., hidden]`
    pub fn forward<const D: usize>(
        &self,
        plan: &ComputePlan,
        x: Tensor<B, D>,
        eps: f64,
        unshifted_fault: bool,
    ) -> Tensor<B, D> {
        ops::layer_norm(plan, x, &self.weight, &self.bias, eps, unshifted_fault)
    }
}
