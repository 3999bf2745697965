"""Run the docstring examples of every installed trustfeed module.

``pytest --doctest-modules`` imports the source folders as top-level packages
(``features.events``), which breaks their relative imports in this layout; importing them
as ``trustfeed.*`` and running :mod:`doctest` on each is the faithful check.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest


def _trustfeed_modules() -> list[str]:
    names = []
    for package_name in ("trustfeed.features", "trustfeed.ranker", "trustfeed.training", "trustfeed.serving"):
        package = importlib.import_module(package_name)
        names.append(package_name)
        names += [info.name for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}.")]
    return sorted(names)


@pytest.mark.parametrize("module_name", _trustfeed_modules())
def test_docstring_examples(module_name: str) -> None:
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {module_name}"
