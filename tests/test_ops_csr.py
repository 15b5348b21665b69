"""The torch custom ops: opcheck, gradcheck in float64, gradients against the dense reference."""
import pytest
import torch

from sparsekern.formats import csr

from conftest import random_sparse_weight


def packed_case(out_features=6, in_features=9, density=0.4, value_dtype=torch.float32, seed=0):
    weight, mask = random_sparse_weight(out_features, in_features, density,
                                        generator=torch.Generator().manual_seed(seed))
    return csr.pack(weight, mask, value_dtype), weight * mask


@pytest.mark.parametrize("value_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("x_shape", [(4, 9), (1, 9), (2, 3, 9), (0, 9)])
def test_opcheck_csr_linear(value_dtype, with_bias, x_shape):
    packed, _ = packed_case(value_dtype=value_dtype)
    x = torch.randn(x_shape, requires_grad=True)
    values = packed.values.clone().requires_grad_(value_dtype == torch.float32)
    bias = torch.randn(6, requires_grad=True) if with_bias else None
    torch.library.opcheck(torch.ops.sparsekern.csr_linear.default,
                          (x, packed.row_ptr, packed.col_idx, values, bias, 9, 6))


def test_opcheck_backward_ops():
    packed, _ = packed_case()
    grad_y = torch.randn(5, 6)
    x = torch.randn(5, 9)
    torch.library.opcheck(torch.ops.sparsekern.csr_linear_grad_input.default,
                          (grad_y, packed.row_ptr, packed.col_idx, packed.values, 9))
    torch.library.opcheck(torch.ops.sparsekern.csr_sampled_grad.default,
                          (grad_y, x, packed.row_ptr, packed.col_idx, packed.values, 9))


def test_gradcheck_float64():
    packed, _ = packed_case(5, 7, 0.5)
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    values = packed.values.double().requires_grad_()
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    fn = lambda x, v, b: torch.ops.sparsekern.csr_linear(x, packed.row_ptr, packed.col_idx, v, b, 7, 5)
    assert torch.autograd.gradcheck(fn, (x, values, bias))


def test_gradients_match_masked_dense():
    packed, dense = packed_case(30, 40, 0.2, seed=3)
    mask = csr.mask_of(packed, (30, 40))
    x = torch.randn(2, 8, 40, requires_grad=True)
    values = packed.values.clone().requires_grad_()
    bias = torch.randn(30, requires_grad=True)
    y = torch.ops.sparsekern.csr_linear(x, packed.row_ptr, packed.col_idx, values, bias, 40, 30)
    grad_y = torch.randn_like(y)
    y.backward(grad_y)

    x_ref = x.detach().double().requires_grad_()
    w_ref = dense.double().requires_grad_()
    b_ref = bias.detach().double().requires_grad_()
    (x_ref @ w_ref.T + b_ref).backward(grad_y.double())
    torch.testing.assert_close(x.grad.double(), x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values.grad.double(), w_ref.grad[mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bias.grad.double(), b_ref.grad, rtol=1e-5, atol=1e-5)


def test_fake_kernel_checks_like_the_real_one():
    packed, _ = packed_case()
    with torch._subclasses.fake_tensor.FakeTensorMode():
        x = torch.empty(4, 8)
        with pytest.raises(ValueError, match="x.shape\\[-1\\] = 8, expected in_features = 9"):
            torch.ops.sparsekern.csr_linear(x, torch.empty(7, dtype=torch.int64),
                                            torch.empty(3, dtype=torch.uint16), torch.empty(3), None, 9, 6)
