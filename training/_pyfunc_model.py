"""The MLflow pyfunc face of a trustfeed model ("models from code": nothing is pickled).

``trustfeed.training.train`` logs this file as the model's code with
``mlflow.pyfunc.log_model(python_model=<this file>, artifacts={"bundle": <bundle dir>})``.
MLflow executes the file when it loads the model, so it uses absolute ``trustfeed``
imports (it runs as a script, not as a module of the package) and ends with
:func:`mlflow.models.set_model`.

``predict`` takes ranking requests (docs/contract.md section 3) and returns responses, ranked by
the same :class:`~trustfeed.serving.FeedRanker` that in-process serving uses. Accepted
inputs: what MLflow hands over after enforcing the signature (a DataFrame with one row
per request: ``request_id``, ``user_id``, ``ts``, ``k``, ``candidates``), a list of
request dicts, one request dict, or a DataFrame with a ``request`` column of JSON strings.
"""

from __future__ import annotations

import json
import math
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

__all__ = ["TrustfeedPyfuncModel", "requests_from_model_input"]


def _plain(value: Any) -> Any:
    """Numpy scalars/arrays (as MLflow's schema enforcement produces them) -> JSON-like Python."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def requests_from_model_input(model_input: Any) -> list[dict[str, Any]]:
    """Normalise pyfunc input to a list of request dicts (see the module docstring)."""
    import pandas as pd

    if isinstance(model_input, dict):
        return [_plain(model_input)]
    if isinstance(model_input, pd.DataFrame):
        if "request" in model_input.columns and "candidates" not in model_input.columns:
            return [json.loads(r) if isinstance(r, str) else _plain(r) for r in model_input["request"]]
        records = model_input.to_dict(orient="records")
        requests = [_plain(r) for r in records]
        # an optional field missing from some requests arrives as NaN/None in its column
        return [{k: v for k, v in r.items() if v is not None} for r in requests]
    if isinstance(model_input, (list, tuple)):
        return [json.loads(r) if isinstance(r, str) else _plain(r) for r in model_input]
    if isinstance(model_input, str):
        decoded = json.loads(model_input)
        return decoded if isinstance(decoded, list) else [decoded]
    raise TypeError(f"expected ranking requests (DataFrame, list of dicts or dict), got {type(model_input).__name__}")


class TrustfeedPyfuncModel(PythonModel):
    """Ranks requests with the bundle logged as the artifact ``bundle``."""

    def load_context(self, context: Any) -> None:
        from trustfeed.serving import FeedRanker

        # LightGBM, not the compiled default: MLflow loads this model while logging it (to check
        # the input example), and a compilation there would lengthen every training job
        self._ranker = FeedRanker.load(context.artifacts["bundle"], predictor="lightgbm")

    # MLflow turns a type hint on ``model_input`` into its own input validation and signature
    # inference (and warns when it is missing or too loose). Requests are validated by
    # trustfeed and the signature is given explicitly, so that machinery is switched off and
    # ``model_input`` is deliberately left unannotated.
    _skip_type_hint_validation = True

    def predict(  # type: ignore[no-untyped-def]
        self, context: Any, model_input, params: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Rank ``model_input`` (requests, see the module docstring); one response per request."""
        from trustfeed.features.errors import TrustfeedError

        requests = requests_from_model_input(model_input)
        try:
            return list(self._ranker.rank_many(requests))
        except TrustfeedError:
            # one malformed request must not fail the batch: rank one by one, reporting the bad
            # ones in place with an "error" field as `trustfeed rank` does
            return [self._rank_one(r) for r in requests]

    def _rank_one(self, request: dict[str, Any]) -> dict[str, Any]:
        from trustfeed.features.errors import TrustfeedError

        try:
            return dict(self._ranker.rank(request))
        except TrustfeedError as error:
            request_id = request.get("request_id") if isinstance(request, dict) else None
            return {"request_id": request_id, "error": " ".join(str(error).split())}


mlflow.models.set_model(TrustfeedPyfuncModel())
