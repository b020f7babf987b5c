//! Weights on the device: uploads cast to the policy's storage dtype, and the two modules
//! every layer is built from (`Linear`, `LayerNorm`), each keeping the plan (and the fault
//! switches) it was built with, so its forward takes only the activations.

use burn::tensor::{Tensor, TensorData, backend::Backend};

use super::cpu_kernels::TileWeights;
use super::ops;
use super::precision::ComputePlan;
use super::weights::{HostTensor, LinearWeights, NormWeights};

/// Uploads a host tensor and casts it to the plan's storage dtype.
///
/// The rank is checked by the loaders (every tensor's shape is validated against the
/// config), so a mismatch here is a bug, not bad input.
pub fn to_device<B: Backend, const D: usize>(
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

/// A PyTorch `Linear` on the device, weight stored transposed for `x @ w`. Cloning shares
/// the device tensors.
#[derive(Clone)]
pub struct DeviceLinear<B: Backend> {
    /// `[in, out]`.
    pub weight_t: Tensor<B, 2>,
    /// `[out]`.
    pub bias: Tensor<B, 1>,
    plan: ComputePlan,
    /// `weight_t` packed for the CPU's tile products, once.
    tiles: TileWeights,
}

impl<B: Backend> DeviceLinear<B> {
    pub fn new(w: &LinearWeights, plan: &ComputePlan, device: &B::Device) -> Self {
        Self {
            weight_t: to_device(&w.weight.transposed(), plan, device),
            bias: to_device(&w.bias, plan, device),
            plan: *plan,
            tiles: TileWeights::default(),
        }
    }

    /// The same weights computed under `plan` (of the same storage dtype).
    pub(super) fn with_plan(mut self, plan: &ComputePlan) -> Self {
        debug_assert_eq!(plan.dtype(), self.plan.dtype());
        self.plan = *plan;
        self
    }

    /// The backend this linear's plan runs on.
    pub fn backend(&self) -> crate::backend::BackendKind {
        self.plan.backend
    }

    /// Computed in the weights' dtype (`x` is cast to it; a no-op unless a mixed policy keeps
    /// the residual stream in f32).
    ///
    /// # Shapes
    /// `x: [..., in]` -> `[..., out]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let x = x.cast(self.weight_t.dtype());
        let dims = x.dims();
        let [d_in, d_out] = self.weight_t.dims();
        let rows = dims[..D - 1].iter().product();
        let y = self.add_bias(self.product(x.reshape([rows, d_in])));
        let mut out_dims = dims;
        out_dims[D - 1] = d_out;
        y.reshape(out_dims)
    }

    /// [`Self::forward`] without the bias: a kernel that adds it itself takes it from here.
    ///
    /// # Shapes
    /// `x: [rows, in]` -> `[rows, out]`
    pub fn forward_unbiased(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.product(x.cast(self.weight_t.dtype()))
    }

    /// `y + bias` as [`Self::forward`] adds it: `forward(x) == add_bias(forward_unbiased(x))`.
    ///
    /// # Shapes
    /// `y: [rows, out]` -> `[rows, out]`
    pub fn add_bias(&self, y: Tensor<B, 2>) -> Tensor<B, 2> {
        ops::add_bias(&self.plan, y, &self.bias)
    }

    /// `x @ weight_t` under the plan; on the CPU's tiles with the weight packed once.
    ///
    /// # Shapes
    /// `x: [rows, in]` -> `[rows, out]`
    fn product(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.tiles
            .product(&self.plan, x, &self.weight_t)
            .unwrap_or_else(|x| ops::matmul(&self.plan, x, self.weight_t.clone()))
    }

    /// `gelu(self.forward(x))`, the exact GELU; the bias add and GELU are one pass on the CPU
    /// ([`super::cpu_kernels::bias_gelu`]) and on CUDA ([`super::cuda_gelu::bias_gelu`]),
    /// each bit-identical to the composed ops.
    ///
    /// # Shapes
    /// `x: [rows, in]` -> `[rows, out]`
    pub fn forward_gelu(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let product = self.product(x.cast(self.weight_t.dtype()));
        super::cpu_kernels::bias_gelu(self.plan.backend, product, &self.bias)
            .or_else(|product| super::cuda_gelu::bias_gelu(product, &self.bias))
            .unwrap_or_else(|product| ops::gelu_exact(product + self.bias.clone().unsqueeze::<2>()))
    }
}

/// A PyTorch `LayerNorm` on the device. Cloning shares the device tensors.
#[derive(Clone)]
pub struct DeviceNorm<B: Backend> {
    /// `[hidden]`.
    pub weight: Tensor<B, 1>,
    /// `[hidden]`.
    pub bias: Tensor<B, 1>,
    plan: ComputePlan,
    eps: f64,
    /// The unshifted-half-statistics fault (statistics in the storage dtype).
    unshifted_fault: bool,
}

impl<B: Backend> DeviceNorm<B> {
    pub fn new(
        w: &NormWeights,
        plan: &ComputePlan,
        eps: f64,
        unshifted_fault: bool,
        device: &B::Device,
    ) -> Self {
        Self {
            weight: to_device(&w.weight, plan, device),
            bias: to_device(&w.bias, plan, device),
            plan: *plan,
            eps,
            unshifted_fault,
        }
    }

    /// The same weights computed under `plan` (of the same storage dtype).
    pub(super) fn with_plan(mut self, plan: &ComputePlan) -> Self {
        debug_assert_eq!(plan.dtype(), self.plan.dtype());
        self.plan = *plan;
        self
    }

    /// `sum = x + (product + product_bias)` and this norm of `sum` in one kernel
    /// ([`super::cuda_norm::residual_layer_norm`]) where it takes them: all of this norm's
    /// plan dtype on CUDA; `(x, product)` back otherwise.
    ///
    /// # Shapes
    /// `x`, `product: [tokens, hidden]`, `product_bias: [hidden]` -> (`sum`, `normed`)
    #[allow(clippy::type_complexity)]
    pub fn forward_residual(
        &self,
        x: Tensor<B, 2>,
        product: Tensor<B, 2>,
        product_bias: &Tensor<B, 1>,
    ) -> Result<(Tensor<B, 2>, Tensor<B, 2>), (Tensor<B, 2>, Tensor<B, 2>)> {
        if x.dtype() != self.plan.dtype() {
            return Err((x, product));
        }
        super::cuda_norm::residual_layer_norm(
            &self.plan,
            x,
            product,
            product_bias,
            &self.weight,
            &self.bias,
            self.eps,
            self.unshifted_fault,
        )
    }

    /// Computed in this norm's plan dtype (f32 for an FP32 place of a reduced policy), the
    /// result returned in `x`'s dtype.
    ///
    /// # Shapes
    /// `x: [..., hidden]` -> `[..., hidden]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dtype = x.dtype();
        ops::layer_norm(
            &self.plan,
            x.cast(self.plan.dtype()),
            &self.weight,
            &self.bias,
            self.eps,
            self.unshifted_fault,
        )
        .cast(dtype)
    }
}
