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
    assert demo.main(argv + ["--epochs", "3", "--hidden", "64"]) == 0
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
               "--format", "dense"])
    out = capsys.readouterr().out
    dense = int(re.search(r"^dense\s+\S+\s+([\d,]+)", out, re.M).group(1).replace(",", ""))
    pruned = int(re.search(r"^pruned.*%\s+([\d,]+)", out, re.M).group(1).replace(",", ""))
    assert pruned < 0.5 * dense


@pytest.mark.parametrize("argv,message", [
    (["--method", "nm", "--gradual"], "--gradual supports"),
    (["--sparsity", "1.5"], "--sparsity = 1.5"),
    (["--method", "obd"], "invalid choice: 'obd'"),
])
def test_demo_rejects_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit) as error:
        demo.main(argv)
    assert error.value.code == 2
    assert message in capsys.readouterr().err
