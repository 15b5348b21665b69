"""Accuracy targets on scikit-learn's digits (64-512-512-10 MLP, 449 test images: one
image is 0.22 points). Figures print with ``pytest -s``."""
import pytest

from prune_fixtures import dense_accuracy, dense_model, digits, evaluate, fine_tune
from sparsekern import prune
from sparsekern.tools.training import accuracy, batches, cross_entropy_loss, train


def report(name, value, sparsity):
    print(f"\n{name}: dense {dense_accuracy():.2f}%  ->  {value:.2f}% at {sparsity:.1%} sparsity")


def test_dense_baseline_is_good():
    assert dense_accuracy() > 95.0


def test_magnitude_global_90_with_fine_tuning_within_1_point():
    model = prune.magnitude(dense_model(), 0.9)
    fine_tune(model)
    report("magnitude 90% + fine-tuning", evaluate(model), prune.global_sparsity(model))
    assert prune.global_sparsity(model) == pytest.approx(0.9, abs=1e-4)
    assert evaluate(model) >= dense_accuracy() - 1.0


def test_2_4_with_fine_tuning_within_half_a_point():
    model = prune.nm(dense_model(), 2, 4)
    fine_tune(model)
    report("2:4 + fine-tuning", evaluate(model), prune.global_sparsity(model))
    for name, module in model.named_modules():
        if hasattr(module, "weight_mask"):
            assert ((module.weight != 0).reshape(-1, 4).sum(1) <= 2).all(), name
    assert evaluate(model) >= dense_accuracy() - 0.5


def test_structured_half_the_neurons_removed_within_2_points():
    dense = dense_model()
    model = prune.structured(dense_model(), 0.5, shrink=True)
    assert [m.out_features for m in model if hasattr(m, "out_features")] == [256, 256, 10]
    fine_tune(model)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"\nstructured: {sum(p.numel() for p in dense.parameters()):,} -> {parameters:,} parameters")
    report("structured 50% neurons, shrunk, + fine-tuning", evaluate(model), 0.5)
    assert parameters < 0.3 * sum(p.numel() for p in dense.parameters())
    assert evaluate(model) >= dense_accuracy() - 2.0


def test_taylor_beats_random_at_90_without_fine_tuning():
    data = digits()
    calibration = batches(data.x_train, data.y_train)
    taylor = prune.taylor(dense_model(), cross_entropy_loss, calibration, 0.9)
    random = prune.random(dense_model(), 0.9, seed=0)
    report("taylor 90%, no fine-tuning", evaluate(taylor), prune.global_sparsity(taylor))
    report("random 90%, no fine-tuning", evaluate(random), prune.global_sparsity(random))
    assert evaluate(taylor) >= evaluate(random) + 30.0


def test_sensitivity_allocation_at_least_as_good_as_uniform():
    data = digits()
    dense = dense_model()
    table = prune.sensitivity(dense, lambda m: accuracy(m, data.x_val, data.y_val), (0.5, 0.7, 0.8, 0.9, 0.95, 0.98))
    print(f"\n{table}")
    for target in (0.8, 0.9):
        allocation = prune.allocate(table, target)
        allocated = prune.magnitude(dense_model(), allocation, scope="layer")
        uniform = prune.magnitude(dense_model(), target, scope="layer")
        assert prune.global_sparsity(allocated) == pytest.approx(target, abs=1e-3)
        report(f"sensitivity-allocated {allocation}", evaluate(allocated), prune.global_sparsity(allocated))
        report("uniform per layer", evaluate(uniform), prune.global_sparsity(uniform))
        assert evaluate(allocated) >= evaluate(uniform)
    # the most sensitive layer (the 64-input first layer) gets less than the least sensitive
    assert allocation["0"] < allocation["2"]


def test_gradual_magnitude_90_within_1_point():
    data = digits()
    model = dense_model()
    steps_per_epoch = -(-len(data.y_train) // 64)
    pruner = prune.GradualPruner(model, "magnitude", final_sparsity=0.9, start_step=0,
                                 end_step=10 * steps_per_epoch, frequency=steps_per_epoch // 2)
    train(model, data.x_train, data.y_train, 15, lr=3e-4, after_step=pruner.step)
    report("gradual magnitude 90% (cubic)", evaluate(model), prune.global_sparsity(model))
    assert prune.global_sparsity(model) == pytest.approx(0.9, abs=1e-4)
    assert evaluate(model) >= dense_accuracy() - 1.0
