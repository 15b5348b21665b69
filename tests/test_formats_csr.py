"""CSR pack / unpack / validate: exact round trips and clear errors on corrupted buffers."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsekern.formats import csr
from sparsekern.formats.csr import CsrTensors


@st.composite
def weights_and_masks(draw):
    out_features = draw(st.integers(0, 12))
    in_features = draw(st.integers(0, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(out_features, in_features, generator=g) < density
    weight = 1 + torch.rand(out_features, in_features, generator=g)
    return weight, mask


@settings(max_examples=200, deadline=None)
@given(weights_and_masks(), st.sampled_from([torch.float32, torch.bfloat16]))
def test_pack_unpack_round_trip(wm, value_dtype):
    weight, mask = wm
    packed = csr.pack(weight, mask, value_dtype)
    csr.validate(packed, weight.shape)
    assert packed.values.dtype == value_dtype
    assert packed.col_idx.dtype == torch.uint16
    assert packed.values.numel() == int(mask.sum())
    assert torch.equal(csr.mask_of(packed, weight.shape), mask)
    expected = (weight * mask).to(value_dtype)
    assert torch.equal(csr.unpack(packed, weight.shape), expected)


@settings(max_examples=100, deadline=None)
@given(weights_and_masks())
def test_default_mask_is_the_weights_zeros(wm):
    weight, mask = wm
    packed = csr.pack(weight * mask)
    assert torch.equal(csr.mask_of(packed, weight.shape), mask)


def test_kept_zero_stays_stored():
    weight = torch.zeros(2, 3)
    mask = torch.tensor([[True, False, False], [False, False, True]])
    packed = csr.pack(weight, mask)
    assert packed.values.tolist() == [0.0, 0.0]
    assert torch.equal(csr.mask_of(packed, (2, 3)), mask)


def test_int32_indices_past_65536():
    assert csr.index_dtype(65536) == torch.uint16
    assert csr.index_dtype(65537) == torch.int32
    weight = torch.zeros(2, 65537)
    weight[1, 65536] = 3.0
    packed = csr.pack(weight)
    assert packed.col_idx.dtype == torch.int32 and packed.col_idx.tolist() == [65536]
    assert torch.equal(csr.unpack(packed, weight.shape), weight)


def test_float_mask_and_bad_masks():
    weight = torch.ones(2, 2)
    packed = csr.pack(weight, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert packed.values.numel() == 2
    with pytest.raises(ValueError, match=r"mask.shape = \(2, 3\), expected weight.shape = \(2, 2\)"):
        csr.pack(weight, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="only 0 and 1"):
        csr.pack(weight, torch.tensor([[0.5, 1.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        csr.pack(torch.ones(3))
    with pytest.raises(TypeError, match="floating point"):
        csr.pack(torch.ones(2, 2, dtype=torch.int64))


def good():
    weight = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 3.0, 4.0, 5.0]])
    return csr.pack(weight), (3, 4)


def corrupt(**changes):
    packed, shape = good()
    return packed._replace(**changes), shape


@pytest.mark.parametrize("packed_shape, error, message", [
    (corrupt(row_ptr=torch.tensor([0, 2, 1, 5])), ValueError, "row_ptr decreases at row 1: 2 -> 1"),
    (corrupt(row_ptr=torch.tensor([0, 2, 2, 6])), ValueError, r"row_ptr must run from 0 to nnz = 5, got 0 .. 6"),
    (corrupt(row_ptr=torch.tensor([1, 2, 2, 5])), ValueError, "from 0 to nnz"),
    (corrupt(row_ptr=torch.tensor([0, 2, 5])), ValueError, "row_ptr has 3 entries, expected out_features \\+ 1 = 4"),
    (corrupt(row_ptr=torch.tensor([0, 2, 2, 5], dtype=torch.int32)), TypeError, "row_ptr.dtype"),
    (corrupt(col_idx=torch.tensor([0, 4, 1, 2, 3]).to(torch.uint16)), ValueError,
     r"col_idx\[1\] = 4 is out of range \[0, 4\)"),
    (corrupt(col_idx=torch.tensor([0, 2, 2, 1, 3]).to(torch.uint16)), ValueError,
     "not strictly increasing within a row at nonzero 3: 2 then 1"),
    (corrupt(col_idx=torch.tensor([0, 2, 1, 1, 3]).to(torch.uint16)), ValueError,
     "not strictly increasing within a row at nonzero 3: 1 then 1"),
    (corrupt(col_idx=torch.tensor([0, 2, 1, 2]).to(torch.uint16)), ValueError, "values has 5 entries but col_idx has 4"),
    (corrupt(col_idx=torch.tensor([0, 2, 1, 2, 3])), TypeError, "col_idx.dtype = torch.int64"),
    (corrupt(values=torch.ones(5, dtype=torch.int32)), TypeError, "values.dtype"),
    (corrupt(values=torch.ones(5, 1)), ValueError, "values must be 1-D"),
    (corrupt(col_idx=torch.tensor([0, -1, 1, 2, 3], dtype=torch.int32)), ValueError, r"col_idx\[1\] = -1"),
])
def test_validate_names_the_problem(packed_shape, error, message):
    packed, shape = packed_shape
    with pytest.raises(error, match=message):
        csr.validate(packed, shape)


def test_validate_accepts_good_and_uint16_limit():
    packed, shape = good()
    csr.validate(packed, shape)
    with pytest.raises(ValueError, match="uint16 col_idx cannot address in_features = 70000"):
        csr.validate(CsrTensors(torch.zeros(2, dtype=torch.int64), torch.zeros(0, dtype=torch.uint16),
                                torch.zeros(0)), (1, 70000))


@settings(max_examples=150, deadline=None)
@given(weights_and_masks(), st.data())
def test_validate_never_accepts_out_of_range_or_unsorted(wm, data):
    """Any single index change that leaves [0, in) or breaks the ordering is caught."""
    weight, mask = wm
    packed = csr.pack(weight, mask)
    nnz = packed.values.numel()
    if nnz == 0:
        return
    j = data.draw(st.integers(0, nnz - 1))
    new_col = data.draw(st.integers(0, 65535))
    cols = packed.col_idx.to(torch.int64).clone()
    cols[j] = new_col
    bad = packed._replace(col_idx=cols.to(torch.uint16))
    rows = csr.row_indices(packed.row_ptr, packed.col_idx.shape[0])
    same_row = rows == rows[j]
    row_cols = cols[same_row]
    legal = new_col < weight.shape[1] and bool((row_cols.diff() > 0).all())
    if legal:
        csr.validate(bad, weight.shape)
    else:
        with pytest.raises(ValueError):
            csr.validate(bad, weight.shape)
