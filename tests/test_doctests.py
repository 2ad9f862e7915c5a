"""The ``Example:`` sections of the public docstrings run, and print what they say."""

import doctest

import pytest

import tversky_keras
from tversky_keras import losses, metrics


@pytest.mark.parametrize("module, names", [
    (losses, ["TverskyLoss"]),
    (metrics, ["DiceScore", "PRAUC"]),
])
def test_docstring_examples(module, names):
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = {t.name.rsplit(".", 1)[-1]: t for t in finder.find(module) if t.examples}
    assert set(names) <= set(tests), f"{module.__name__}: no Example in {set(names) - set(tests)}"
    for name in names:
        runner.run(tests[name])
    assert runner.failures == 0 and runner.tries >= 3 * len(names)


def test_the_public_api_is_declared():
    assert set(tversky_keras.__all__) <= set(dir(tversky_keras))
    for name in ("TverskyLoss", "DiceLoss", "DiceScore", "PRAUC", "unet3d", "__version__"):
        assert name in tversky_keras.__all__
