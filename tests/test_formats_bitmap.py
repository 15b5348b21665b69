"""The bitmap format (sparsekern.formats.bitmap) and its eager op (ops.linear_eager("bitmap", ...)): exact
pack/unpack, validation of every kind of bad buffer, fuzzed bytes, kernels against float64."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsekern
from sparsekern.formats import PACKED_FORMATS, bitmap
from sparsekern import ops

from conftest import assert_matches_reference, random_sparse_weight

SHAPE = (5, 40)  # two words per row, the second one partial


@settings(max_examples=60, deadline=None)
@given(out_features=st.integers(0, 6), in_features=st.integers(0, 70), density=st.sampled_from([0.0, 0.3, 0.7, 1.0]),
       seed=st.integers(0, 2**31), value_dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]))
def test_pack_unpack_round_trip_is_exact(out_features, in_features, density, seed, value_dtype):
    g = torch.Generator().manual_seed(seed)
    weight, mask = random_sparse_weight(out_features, in_features, density, value_dtype, generator=g)
    packed = bitmap.pack(weight, mask)
    bitmap.validate(packed, (out_features, in_features))
    assert packed.bits.dtype == torch.uint32 and packed.offsets.dtype == torch.int64
    assert packed.values.dtype == value_dtype and packed.values.numel() == int(mask.sum())
    assert packed.bits.shape == (out_features, (in_features + 31) // 32)
    assert torch.equal(bitmap.unpack(packed, (out_features, in_features)), weight)
    assert torch.equal(bitmap.mask_of(packed, (out_features, in_features)), mask)
    assert all(torch.equal(a, b) for a, b in zip(bitmap.pack(weight, mask), packed))


def test_layout_is_documented_bits():
    weight = torch.arange(1.0, 35.0).reshape(1, 34)
    mask = torch.zeros(1, 34, dtype=torch.bool)
    mask[0, [0, 3, 31, 33]] = True
    packed = bitmap.pack(weight, mask)
    assert packed.bits.to(torch.int64).tolist() == [[1 | 1 << 3 | 1 << 31, 1 << 1]]
    assert packed.offsets.tolist() == [0, 4]
    assert packed.values.tolist() == [1, 4, 32, 34]


def test_kept_zero_is_stored():
    weight = torch.tensor([[0.0, 2.0, 0.0]])
    packed = bitmap.pack(weight, torch.tensor([[True, True, False]]))
    assert packed.values.tolist() == [0.0, 2.0] and bitmap.nnz(packed) == 2


def test_skeleton_is_valid_with_any_nnz():
    for nnz in (0, 7, 200):
        skeleton = bitmap.skeleton(SHAPE, nnz, torch.float32)
        bitmap.validate(skeleton, SHAPE)
        assert bitmap.nnz(skeleton) == nnz and not skeleton.values.any()


def test_registered_as_packed_format():
    fmt = PACKED_FORMATS["bitmap"]
    assert fmt.layout is bitmap.BitmapTensors and fmt.layout._fields[-1] == "values"
    assert fmt.incompatible(torch.ones(3, 3, dtype=torch.bool)) is None


def _packed():
    weight, mask = random_sparse_weight(*SHAPE, 0.5)
    return bitmap.pack(weight, mask)


def _set_word(bits, row, word, value):
    bits = bits.to(torch.int64)
    bits[row, word] = value
    return bits.to(torch.uint32)


def _extra_bit(p):
    """Row 1 keeps one more column (a clear bit of its first word set), values unchanged."""
    word = int(p.bits[1, 0].to(torch.int64))
    clear = next(j for j in range(32) if not word >> j & 1)
    return p._replace(bits=_set_word(p.bits, 1, 0, word | 1 << clear))


@pytest.mark.parametrize("change, error, message", [
    (lambda p: p._replace(values=p.values[:-1]), ValueError, "offsets must run from 0 to the number of values"),
    (lambda p: p._replace(values=torch.cat([p.values, p.values[:1]])), ValueError, "offsets must run from 0"),
    (lambda p: p._replace(bits=p.bits[:-1]), ValueError, r"bits.shape = \(4, 2\)"),
    (lambda p: p._replace(bits=p.bits[:, :1]), ValueError, r"bits.shape = \(5, 1\)"),
    (lambda p: p._replace(offsets=p.offsets[:-1]), ValueError, r"offsets.shape = \(5,\)"),
    (lambda p: p._replace(offsets=p.offsets + 1), ValueError, "offsets must run from 0"),
    (lambda p: p._replace(offsets=p.offsets.index_put((torch.tensor(2),), p.offsets[2] + 1)), ValueError,
     r"offsets row 1: \d+ values, but its bits keep"),
    (_extra_bit, ValueError, r"offsets row 1: \d+ values, but its bits keep \d+|offsets must run"),
    (lambda p: p._replace(bits=_set_word(p.bits, 3, 1, 1 << 8)), ValueError,
     "bits row 3: padding bits past in_features = 40 are set"),
    (lambda p: p._replace(bits=p.bits.to(torch.int32)), TypeError, "bits.dtype"),
    (lambda p: p._replace(offsets=p.offsets.to(torch.int32)), TypeError, "offsets.dtype"),
    (lambda p: p._replace(values=p.values.to(torch.int32)), TypeError, "values.dtype"),
    (lambda p: p._replace(values=p.values.reshape(1, -1)), ValueError, "values must be 1-D"),
    (lambda p: p._replace(bits=p.bits.tolist()), TypeError, "bits must be a tensor"),
])
def test_validate_names_each_corruption(change, error, message):
    with pytest.raises(error, match=message):
        bitmap.validate(change(_packed()), SHAPE)


def test_popcount_and_values_disagree_with_consistent_offsets_end():
    # One bit moves from row 0 to row 1: totals still agree, the per-row counts do not.
    p = _packed()
    row0 = int(p.bits[0, 0].to(torch.int64))
    low = row0 & -row0
    row1 = int(p.bits[1, 0].to(torch.int64))
    clear = next(1 << j for j in range(32) if not row1 >> j & 1)
    bits = _set_word(_set_word(p.bits, 0, 0, row0 & ~low), 1, 0, row1 | clear)
    with pytest.raises(ValueError, match="offsets row 0"):
        bitmap.validate(p._replace(bits=bits), SHAPE)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_random_byte_flips_never_crash(data):
    """Whatever bytes change, validate raises ValueError or the tensors are consistent, and then
    the kernel runs on them without reading out of bounds (it agrees with the reference)."""
    packed = _packed()
    tensors = list(packed)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, 2))
        raw = tensors[i].reshape(-1).view(torch.uint8).clone()
        if raw.numel() == 0:
            continue
        pos = data.draw(st.integers(0, raw.numel() - 1))
        raw[pos] ^= data.draw(st.integers(1, 255))
        tensors[i] = raw.view(tensors[i].dtype).reshape(tensors[i].shape)
    corrupted = bitmap.BitmapTensors(*tensors)
    try:
        bitmap.validate(corrupted, SHAPE)
    except ValueError:
        return
    x = torch.randn(3, SHAPE[1])
    weight = bitmap.unpack(corrupted, SHAPE)
    if torch.isfinite(weight).all():
        assert_matches_reference(ops.linear_eager("bitmap", x, corrupted, None, SHAPE[1], SHAPE[0]), x, weight)


@pytest.mark.parametrize("batch", [0, 1, 3, 64])
@pytest.mark.parametrize("value_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
# (70, 1100): at batch 64 the float32 batched path takes its columns in chunks (bitmap_linear_simd.h).
@pytest.mark.parametrize("shape, density", [((37, 70), 0.3), ((16, 33), 0.7), ((9, 1), 1.0), ((64, 96), 0.5),
                                            ((70, 1100), 0.3)])
def test_eager_matches_reference(isa, batch, value_dtype, x_dtype, shape, density):
    out_features, in_features = shape
    weight, mask = random_sparse_weight(out_features, in_features, density, value_dtype)
    weight[out_features // 2] = 0  # an empty row
    mask[out_features // 2] = False
    packed = bitmap.pack(weight, mask)
    bias = torch.randn(out_features)
    x = torch.randn(batch, in_features).to(x_dtype)
    y = ops.linear_eager("bitmap", x, packed, bias, in_features, out_features, isa=isa)
    assert y.dtype == x_dtype
    assert_matches_reference(y, x, weight, bias)


def test_eager_strided_and_3d_input(isa):
    weight, mask = random_sparse_weight(24, 50, 0.4)
    packed = bitmap.pack(weight, mask)
    x = torch.randn(2, 5, 100)[..., ::2]
    y = ops.linear_eager("bitmap", x, packed, None, 50, 24, isa=isa)
    assert y.shape == (2, 5, 24)
    assert_matches_reference(y, x, weight)


def test_eager_falls_back_for_float64():
    weight, mask = random_sparse_weight(7, 20, 0.5, torch.float64)
    packed = bitmap.pack(weight, mask)
    x = torch.randn(4, 20, dtype=torch.float64)
    y = ops.linear_eager("bitmap", x, packed, None, 20, 7)
    assert y.dtype == torch.float64
    assert_matches_reference(y, x, weight)


def test_binding_rejects_inconsistent_sizes():
    packed = _packed()
    make = sparsekern._backend._C.bitmap_linear
    args = dict(rows=SHAPE[0], cols=SHAPE[1], nnz=packed.values.numel(), bits=packed.bits.data_ptr(),
                words_len=packed.bits.numel(), offsets=packed.offsets.data_ptr(), values=packed.values.data_ptr(),
                value_type=0)
    make(**args)
    with pytest.raises(ValueError, match="offsets must run from 0 to nnz"):
        make(**{**args, "nnz": args["nnz"] + 1})
    with pytest.raises(ValueError, match="bits has"):
        make(**{**args, "words_len": args["words_len"] - 1})
    with pytest.raises(ValueError, match="cols <= 2\\^25"):
        make(**{**args, "cols": (1 << 25) + 1})
