"""A compiled tree predictor for serving: the model's trees as native code (lleaves).

LightGBM's ``Booster.predict`` spends a good part of a 500-candidate call on work that is
the same for every call (argument checks, buffers, threads). lleaves compiles a LightGBM
model text to machine code through LLVM; its predictions equal LightGBM's raw scores (the
tests check 1e-9) and cost a fraction of the time. It is optional (``pip install
'trustfeed[compiled]'``): without it, or for a model it cannot compile, serving keeps
LightGBM.

Compiled code is trusted as much as the model it came from, and no more:

- The text compiled is the verified bundle's model (``Booster.model_to_string`` of the
  loaded booster, which ``load_bundle`` built from the checksummed ``model.txt``).
- A compile cache is optional. Its entries are named by the sha256 of that text together
  with the compiler's versions and the CPU, so a cached object answers exactly one model on
  one machine. Each entry has a sidecar with the sha256 of the object file; the bytes are
  read once, checked against it and only then handed to lleaves (from a private temporary
  copy, so the file loaded is the file checked). A cache directory that other users may
  write to is not used at all: anyone who can write it could plant code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import stat
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ..features.errors import ConfigError, SchemaError

if TYPE_CHECKING:
    from ..ranker.interfaces import Scorer
    from ..ranker.lambdamart import LambdaMART
    from ..ranker.purchase import PurchaseModel

__all__ = [
    "CompiledModel",
    "CompiledPurchaseModel",
    "PREDICTORS",
    "compiled_available",
    "compile_model",
    "default_compile_cache",
]

PREDICTORS = ("auto", "lightgbm", "compiled")
_CACHE_FORMAT = 1
_log = logging.getLogger("trustfeed.serving")
_fallback_logged = False


def default_compile_cache() -> Path:
    """Where compiled models are kept unless the caller says otherwise.

    ``$TRUSTFEED_COMPILE_CACHE`` when set, else ``trustfeed/compiled`` under the user's cache
    directory (``$XDG_CACHE_HOME``, by default ``~/.cache``). It is created private to the
    user (mode 0700) on first use; a directory that other users can write to is never used.
    """
    explicit = os.environ.get("TRUSTFEED_COMPILE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "trustfeed" / "compiled"


def compiled_available() -> bool:
    """Whether the optional compiler (lleaves) can be imported."""
    try:
        import lleaves  # noqa: F401
    except ImportError:
        return False
    return True


class CompiledModel:
    """A fitted LambdaMART whose ``predict`` runs lleaves-compiled trees.

    It stands in for the model inside a :class:`~trustfeed.ranker.pipeline.RankingPipeline`:
    same ``feature_names_``, same ``predict`` contract (a float64 matrix in feature order in,
    raw scores out), and the LightGBM model stays reachable as :attr:`source` (and through
    attribute access, e.g. ``booster_``).

    Parameters
    ----------
    model
        A fitted :class:`~trustfeed.ranker.lambdamart.LambdaMART`.
    cache_dir
        Optional directory of compiled objects (see the module docstring); ``None`` compiles
        in memory.
    """

    def __init__(self, model: LambdaMART, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.source = model
        self.feature_names_: tuple[str, ...] = tuple(model.feature_names_)
        self._trees = _CompiledTrees(
            model.booster_.model_to_string(num_iteration=model.best_iteration_), len(self.feature_names_), cache_dir
        )
        self.model_sha256 = self._trees.sha256
        self.cached = self._trees.cached

    def __getattr__(self, name: str) -> Any:
        # everything but prediction (booster_, best_iteration_, save, ...) is the source model's
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Raw scores of the rows of ``X`` (features in :attr:`feature_names_` order)."""
        return self._trees.predict(X)


class CompiledPurchaseModel:
    """A fitted purchase model whose two stages run lleaves-compiled trees.

    Same ``predict`` as :meth:`~trustfeed.ranker.purchase.PurchaseModel.predict`: both
    stages' raw scores computed here from compiled trees, combined by the model's own
    :meth:`~trustfeed.ranker.purchase.PurchaseModel.score_from_stages`. Each stage is
    compiled from its own model text (truncated at its best iteration, as the LightGBM path
    predicts) and cached under that text's sha256. The LightGBM model stays reachable as :attr:`source`.
    """

    def __init__(self, model: PurchaseModel, cache_dir: str | os.PathLike[str] | None = None) -> None:
        from ..ranker.purchase import _best

        self.source = model
        self.feature_names_: tuple[str, ...] = tuple(model.feature_names_)
        n = len(self.feature_names_)
        self._click, self._buy = (
            _CompiledTrees(booster.model_to_string(num_iteration=_best(booster)), n, cache_dir)
            for booster in (model.click_booster_, model.purchase_booster_)
        )
        self.model_sha256 = (self._click.sha256, self._buy.sha256)
        self.cached = self._click.cached and self._buy.cached

    def __getattr__(self, name: str) -> Any:
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)

    def stage_scores(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The click and purchase stages' raw scores of the rows of ``X``."""
        return self._click.predict(X), self._buy.predict(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """``log P(click | examined at the top) + log P(purchase | click)`` per row."""
        click, buy = self.stage_scores(X)
        # the stages combined by the model's own code (its purchase stage may start from the click score)
        return self.source.score_from_stages(click, buy)


class _CompiledTrees:
    """One LightGBM model text compiled by lleaves (raw scores), optionally through the cache."""

    def __init__(self, text: str, n_features: int, cache_dir: str | os.PathLike[str] | None) -> None:
        import lleaves

        self.sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
        self.cached = False
        self._n_features = n_features
        with tempfile.TemporaryDirectory(prefix="trustfeed-compile-") as work:
            model_file = Path(work) / "model.txt"
            model_file.write_text(text, encoding="utf-8")
            compiled = lleaves.Model(model_file=str(model_file))
            if compiled.num_feature() != n_features:
                raise ConfigError(
                    f"the compiled model reads {compiled.num_feature()} features, the model has {n_features}"
                )
            cache = _Cache(cache_dir, self.sha256) if cache_dir is not None else None
            object_file = Path(work) / "model.o"
            if cache is not None and cache.restore(object_file):
                self.cached = True
            # lleaves loads object_file when it exists and writes it after compiling otherwise
            compiled.compile(cache=str(object_file), raw_score=True)
            if cache is not None and not self.cached:
                cache.store(object_file)
        self._compiled = compiled
        self._predict = compiled._c_entry_func

    def predict(self, X: np.ndarray) -> np.ndarray:
        matrix = np.ascontiguousarray(X, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != self._n_features:
            raise SchemaError("features", None, f"a matrix of {self._n_features} columns", f"shape {matrix.shape}")
        out = np.zeros(matrix.shape[0], dtype=np.float64)
        if matrix.shape[0]:
            # lleaves' own predict converts and checks again; this is its single-thread call
            self._predict(matrix.ctypes.data_as(_DOUBLE_P), out.ctypes.data_as(_DOUBLE_P), 0, matrix.shape[0])
        return out


def compile_model(model: Scorer, predictor: str, cache_dir: str | os.PathLike[str] | None = None) -> Scorer:
    """The model serving should call: ``model`` itself or its compiled form.

    ``predictor="auto"`` compiles when lleaves is installed and can compile the model, and
    otherwise keeps LightGBM and logs one line (once per process) saying why;
    ``"compiled"`` compiles when lleaves is installed and otherwise warns and keeps LightGBM
    (a model lleaves cannot compile raises); ``"lightgbm"`` returns ``model`` unchanged.
    """
    if predictor not in PREDICTORS:
        raise ConfigError(f"predictor must be one of {list(PREDICTORS)}, got {predictor!r}")
    if predictor == "lightgbm" or isinstance(model, (CompiledModel, CompiledPurchaseModel)):
        return model
    if not compiled_available():
        if predictor == "auto":
            _log_fallback("lleaves is not installed (pip install 'trustfeed[compiled]')")
            return model
        warnings.warn(
            "predictor='compiled' needs lleaves (pip install 'trustfeed[compiled]'); serving with LightGBM",
            RuntimeWarning,
            stacklevel=3,
        )
        return model
    if predictor == "compiled":
        return _compiled_form(model, cache_dir)
    try:
        return _compiled_form(model, cache_dir)
    except Exception as error:  # noqa: BLE001 - auto serves with LightGBM whatever the compiler's failure
        _log_fallback(f"the model did not compile ({type(error).__name__}: {error})")
        return model


def _compiled_form(model: Scorer, cache_dir: str | os.PathLike[str] | None) -> Scorer:
    if hasattr(model, "click_booster_") and hasattr(model, "purchase_booster_"):
        return CompiledPurchaseModel(cast("PurchaseModel", model), cache_dir)
    if not hasattr(model, "booster_"):
        return model  # not a LightGBM model (e.g. a test double): nothing to compile
    return CompiledModel(cast("LambdaMART", model), cache_dir)


def _log_fallback(reason: str) -> None:
    global _fallback_logged
    if not _fallback_logged:
        _fallback_logged = True
        _log.warning("trustfeed serving: predictor 'auto' ranks with LightGBM: %s", reason)


class _Cache:
    """One model's entry in a compile cache directory (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str], model_sha256: str) -> None:
        self.directory = Path(directory)
        key = hashlib.sha256(
            json.dumps(
                {
                    "format": _CACHE_FORMAT,
                    "model": model_sha256,
                    "lleaves": metadata.version("lleaves"),
                    "llvmlite": metadata.version("llvmlite"),
                    "machine": platform.machine(),
                    "cpu": _cpu_name(),
                },
                sort_keys=True,
            ).encode()
        ).hexdigest()
        self.object_path = self.directory / f"{key}.o"
        self.digest_path = self.directory / f"{key}.json"

    def _usable(self, create: bool) -> bool:
        if create:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            info = self.directory.stat()
        except FileNotFoundError:
            return False
        private = info.st_uid == os.getuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if not private:
            warnings.warn(
                f"compile cache {self.directory} is writable by other users: not used", RuntimeWarning, stacklevel=4
            )
        return private

    def restore(self, target: Path) -> bool:
        """Copy a verified cached object to ``target``; False when there is none (or it is bad)."""
        if not self._usable(create=False):
            return False
        try:
            expected = json.loads(self.digest_path.read_text(encoding="utf-8"))["sha256"]
            blob = self.object_path.read_bytes()
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if hashlib.sha256(blob).hexdigest() != expected:
            warnings.warn(f"compile cache entry {self.object_path} fails its checksum: recompiling", RuntimeWarning,
                          stacklevel=4)
            return False
        target.write_bytes(blob)
        return True

    def store(self, compiled: Path) -> None:
        """Add a freshly compiled object (temporary names, then renames: never half-written)."""
        try:
            if not self._usable(create=True):
                return
            blob = compiled.read_bytes()
            digest = json.dumps({"sha256": hashlib.sha256(blob).hexdigest()})
            for path, data in ((self.object_path, blob), (self.digest_path, digest.encode())):
                fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, path)
        except OSError as error:  # a cache that cannot be written only costs the next compile
            warnings.warn(f"compile cache {self.directory} not written: {error}", RuntimeWarning, stacklevel=4)


def _cpu_name() -> str:
    import llvmlite.binding as llvm

    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # LLVM cannot detect them everywhere (lleaves then compiles without)
        features = ""
    return f"{llvm.get_host_cpu_name()}:{features}"


def _double_pointer() -> Any:
    import ctypes

    return ctypes.POINTER(ctypes.c_double)


_DOUBLE_P = _double_pointer()
