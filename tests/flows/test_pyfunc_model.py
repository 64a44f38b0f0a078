"""flows/pyfunc_model.py without a trained model: the params a request may carry, as the scoring server of `mlflow
models serve` answers them (no server started, no checkpoint loaded)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.pyfunc import PyFuncModel, scoring_server
from mlflow.pyfunc.model import _PythonModelPyfuncWrapper

from flows.pyfunc_model import SIGNATURE, TextToImageModel

BAD = [({"steps": 0}, "params steps must be at least 1, got 0"),
       ({"n": 0}, "params n must be at least 1, got 0"),
       ({"n": -2}, "params n must be at least 1, got -2"),
       ({"guidance": float("nan")}, "params guidance must be a finite number, got nan")]


def pyfunc() -> PyFuncModel:
    """The model as mlflow.pyfunc.load_model wraps it (the signature's params enforced), its weights never loaded:
    these requests must be refused before generating."""
    python_model = TextToImageModel()
    context = SimpleNamespace(artifacts={}, model_config={})
    return PyFuncModel(Model(signature=SIGNATURE), _PythonModelPyfuncWrapper(python_model, context, SIGNATURE))


@pytest.mark.parametrize(("params", "message"), BAD)
def test_invalid_params_are_refused_naming_the_parameter_and_the_rule(params, message):
    with pytest.raises(MlflowException) as raised:
        pyfunc().predict(pd.DataFrame({"prompt": ["a red circle"]}), params=params)
    assert raised.value.message == message and raised.value.error_code == "INVALID_PARAMETER_VALUE"


def test_over_rest_an_invalid_param_is_a_400_carrying_the_message():
    request = json.dumps({"dataframe_split": {"columns": ["prompt"], "data": [["a red circle"]]},
                          "params": {"steps": 0}})
    with pytest.raises(MlflowException) as raised:
        scoring_server.invocations(request, "application/json", pyfunc(), None)
    assert raised.value.get_http_status_code() == 400
    assert "params steps must be at least 1, got 0" in json.loads(raised.value.serialize_as_json())["message"]
