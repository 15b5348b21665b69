"""`sparsekern demo` (sparsekern.tools.demo.main), run small."""
import re

import pytest

from sparsekern.tools import demo


@pytest.mark.parametrize("argv", [
    ["--method", "taylor", "--sparsity", "0.8", "--format", "csr"],
    ["--method", "structured", "--gradual", "--format", "dense"],
    ["--method", "l0", "--format", "auto"],
    ["--method", "nm", "--format", "2:4"],
], ids=["taylor-csr", "structured-gradual-dense", "l0-auto", "nm-2:4"])
def test_demo_runs_and_reports(argv, capsys):
    assert demo.main(argv + ["--epochs", "3", "--hidden", "64", "--no-large"]) == 0
    out = capsys.readouterr().out
    accuracies = [float(a) for a in re.findall(r"(\d+\.\d+)%\s", out)]
    assert re.search(r"^dense\s+\d+\.\d+%", out, re.M)
    assert re.search(r"^pruned \+ fine-tuned\s+\d+\.\d+%", out, re.M)
    assert len(accuracies) >= 3 and all(50.0 < a <= 100.0 for a in accuracies[:3])
    assert re.search(r"^total\s+\d+\.\d+%", out, re.M)
    for batch in (1, 64):
        assert re.search(rf"^\s+{batch}\s+\d+\.\dus\s+\d+\.\dus\s+\d+\.\d\dx$", out, re.M)


def test_demo_structured_shrinks_the_model(capsys):
    demo.main(["--method", "structured", "--sparsity", "0.5", "--epochs", "2", "--hidden", "64",
               "--format", "dense", "--no-large"])
    out = capsys.readouterr().out
    dense = int(re.search(r"^dense\s+\S+\s+([\d,]+)", out, re.M).group(1).replace(",", ""))
    pruned = int(re.search(r"^pruned.*%\s+([\d,]+)", out, re.M).group(1).replace(",", ""))
    assert pruned < 0.5 * dense


def test_demo_shows_the_machine_choices_and_a_layer_where_sparsity_pays(capsys, monkeypatch):
    import sparsekern.tools.timing as timing

    def fake_rounds(candidates, rounds=7, round_seconds=0.005):  # auto's choice without timing
        baseline = next(iter(candidates))  # dense, timed first in every pair
        return {name: [1e-5 if name == baseline else 2e-6] * rounds for name in candidates}

    monkeypatch.setattr(timing, "time_rounds", fake_rounds)
    assert demo.main(["--epochs", "1", "--hidden", "64", "--batch-sizes", "1", "8"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^sparsekern demo on .*\d+ threads, sparsekern ISA \w+", out, re.M)
    assert "timed at batch sizes 1, 8" in out
    assert "where sparsity pays: MLP 768-3072-768" in out
    assert re.search(r"^0\s+csr\s+3072 x 768\s+90\.0%.*csr measured 5\.00x at batch 1, 5\.00x at batch 8", out, re.M)
    for batch in (1, 8):
        assert len(re.findall(rf"^\s+{batch}\s+\d+\.\dus\s+\d+\.\dus\s+\d+\.\d\dx$", out, re.M)) == 2


@pytest.mark.parametrize("argv,message", [
    (["--method", "nm", "--gradual"], "--gradual supports"),
    (["--sparsity", "1.5"], "--sparsity = 1.5"),
    (["--method", "obd"], "invalid choice: 'obd'"),
    (["--batch-sizes", "0"], "each must be >= 1"),
    (["--hidden", "0"], "--hidden = 0, expected >= 1"),  # was a ZeroDivisionError
    (["--hidden", "-3"], "--hidden = -3, expected >= 1"),  # was a traceback from nn.Linear
    (["--method", "nm", "--hidden", "6"], "needs --hidden to be a multiple of 4"),  # was prune.nm's traceback
    (["--seed", str(2 ** 64)], "fits in 64 bits"),  # was torch's 'Overflow when unpacking long long'
])
def test_demo_rejects_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit) as error:
        demo.main(argv)
    assert error.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_says_in_one_line_a_sparsity_the_pruning_cannot_reach(capsys):
    # A new-user trial: --sparsity 0.995 passes the [0, 1) check, then the global magnitude
    # pruning (each layer capped at 0.99) raised a ValueError traceback after dense training.
    with pytest.raises(SystemExit) as error:
        demo.main(["--sparsity", "0.995", "--epochs", "1", "--hidden", "8", "--no-large"])
    message = str(error.value.code)
    assert message.startswith("sparsekern demo: --method magnitude --sparsity 0.995: sparsity = 0.995 cannot be "
                              "reached with max_layer_sparsity = 0.99")
    assert "\n" not in message
