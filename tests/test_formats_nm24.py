"""The 2:4 format (sparsekern.formats.nm): exact pack/unpack, validation of bad buffers."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsekern.formats import nm

from conftest import mask_24, random_sparse_weight


@settings(max_examples=60, deadline=None)
@given(out_features=st.integers(1, 6), groups=st.integers(1, 7), seed=st.integers(0, 2**31),
       value_dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]))
def test_pack_unpack_round_trip_is_exact(out_features, groups, seed, value_dtype):
    g = torch.Generator().manual_seed(seed)
    in_features = 4 * groups
    weight, _ = random_sparse_weight(out_features, in_features, 1.0, value_dtype, generator=g)
    mask = mask_24(out_features, in_features, g)
    packed = nm.pack(weight, mask)
    nm.validate(packed, (out_features, in_features))
    assert packed.values.dtype == value_dtype and packed.meta.dtype == torch.uint8
    assert packed.meta.shape == (out_features, (groups + 1) // 2)
    dense = nm.unpack(packed, (out_features, in_features))
    assert torch.equal(dense, weight * mask)
    assert not torch.signbit(dense[~mask]).any()  # padding is +0.0
    stored = nm.mask_of(packed, (out_features, in_features))
    assert bool((stored | ~mask).all()) and torch.equal(stored.reshape(out_features, -1, 4).sum(-1),
                                                         torch.full((out_features, groups), 2))
    assert all(torch.equal(a, b) for a, b in zip(nm.pack(dense, stored), packed))


def test_layout_is_documented_nibbles():
    weight = torch.arange(1.0, 13.0).reshape(1, 12)
    mask = torch.tensor([[1, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 0]], dtype=torch.bool)
    packed = nm.pack(weight, mask)
    # groups: (0, 3) -> 0 | 3 << 2 = 12; (1, 2) -> 9; (0, 2) padded -> 8; odd count: high nibble 0.
    assert packed.meta.tolist() == [[12 | 9 << 4, 8]]
    assert packed.values.tolist() == [[1, 4, 6, 7, 0, 11]]


def test_mask_that_is_not_24_names_row_and_group():
    weight = torch.ones(3, 16)
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[2, 4:7] = True
    with pytest.raises(ValueError, match=r"not 2:4: row 2, group 1 \(columns 4..7\) keeps 3 of 4"):
        nm.pack(weight, mask)


def test_in_features_not_multiple_of_4_is_an_error():
    with pytest.raises(ValueError, match="in_features % 4 == 0, got in_features = 10"):
        nm.pack(torch.ones(2, 10), torch.zeros(2, 10, dtype=torch.bool))


def corrupt(packed, **changes):
    return packed._replace(**changes)


@pytest.mark.parametrize("change, message", [
    (lambda p: corrupt(p, values=p.values[:, :-1]), r"values.shape = \(3, 9\)"),
    (lambda p: corrupt(p, values=p.values.to(torch.int32)), "values.dtype"),
    (lambda p: corrupt(p, meta=p.meta.to(torch.int16)), "meta.dtype"),
    (lambda p: corrupt(p, meta=p.meta[:2]), r"meta.shape = \(2, 3\)"),
    (lambda p: corrupt(p, meta=p.meta.index_put((torch.tensor(1), torch.tensor(0)), torch.tensor(5, dtype=torch.uint8))),
     "meta row 1, group 0: positions 1 and 1 must be distinct"),
    (lambda p: corrupt(p, meta=p.meta.index_put((torch.tensor(2), torch.tensor(1)), torch.tensor(3 << 4 | 4, dtype=torch.uint8))),
     "meta row 2, group 3: positions 3 and 0"),
    (lambda p: corrupt(p, meta=p.meta.index_put((torch.tensor(0), torch.tensor(2)), torch.tensor(4 << 4 | 4, dtype=torch.uint8))),
     "meta row 0: the padding nibble"),
    (lambda p: corrupt(p, meta=[1, 2]), "meta must be a tensor"),
])
def test_validate_names_the_problem(change, message):
    weight, _ = random_sparse_weight(3, 20, 1.0)
    packed = nm.pack(weight, mask_24(3, 20, torch.Generator().manual_seed(1), kept_per_group=2))
    nm.validate(packed, (3, 20))
    with pytest.raises((ValueError, TypeError), match=message):
        nm.validate(change(packed), (3, 20))


def test_skeleton_is_valid():
    nm.validate(nm.skeleton((5, 12), 0, torch.float32), (5, 12))
    assert nm.unpack(nm.skeleton((5, 12), 0, torch.float32), (5, 12)).abs().sum() == 0
