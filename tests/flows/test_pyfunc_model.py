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

SEEDS = "(the images' seeds are seed..seed+n-1, each from 0 to 2**63 - 1 as a config's seeds)"
BAD = [({"steps": 0}, "params steps must lie within 1 and 10000, got 0"),
       # fluxflow-generate's bound: a traceback from torch's allocator, or minutes of work after the answer's timeout
       ({"steps": 10**12}, f"params steps must lie within 1 and 10000, got {10**12}"),
       ({"n": 0}, "params n must lie within 1 and 10000, got 0"),
       ({"n": -2}, "params n must lie within 1 and 10000, got -2"),
       ({"n": 10**8}, f"params n must lie within 1 and 10000, got {10**8}"),
       ({"guidance": float("nan")}, "params guidance must be a finite number, got nan"),
       ({"guidance": 1e308}, "params guidance must lie within 0 and 100 (0 ignores the prompt, 1 follows it without "
                             "guidance, more follows it more strongly); got 1e+308"),  # NaN pixels, a black image
       # fluxflow-generate's range (a config's): these were taken, and 2**64 or more failed inside torch.
       ({"seed": -1}, f"params seed must lie within 0 and 2**63 - n {SEEDS}; got -1"),
       ({"seed": 2**63}, f"params seed must lie within 0 and 2**63 - n {SEEDS}; got {2**63}"),
       ({"seed": 2**63 - 2, "n": 3}, f"params seed must lie within 0 and 2**63 - n {SEEDS}; got {2**63 - 2}")]


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


@pytest.mark.parametrize(("prompt", "message"), [
    (None, "prompt 2 of 2 is missing (null): give the words to draw"),  # was drawn as the text 'None'
    ("", "prompt 2 of 2 '' is blank: give the words to draw"),  # fluxflow-generate refuses both
    ("   ", "prompt 2 of 2 '   ' is blank: give the words to draw")])
def test_a_missing_or_blank_prompt_is_refused_naming_it(prompt, message):
    request = json.dumps({"dataframe_split": {"columns": ["prompt"], "data": [["a red circle"], [prompt]]}})
    with pytest.raises(MlflowException) as raised:
        scoring_server.invocations(request, "application/json", pyfunc(), None)
    assert raised.value.get_http_status_code() == 400
    assert message in json.loads(raised.value.serialize_as_json())["message"]


@pytest.mark.parametrize(("size", "message"), [
    (12, "params size must be a positive multiple of 8 (downscale × patch_size); got 12"),
    (72, "params size must be at most 64 (4× the 16 px the model was trained at")])
def test_a_size_the_model_cannot_make_is_refused_without_fluxflow_generates_flag(size, message):
    """The size rule is fluxflow-generate's, whose message names --size: a request sets params size, not a flag, and
    is told so as of its other params ('params steps ...'; it said 'image size')."""
    model = pyfunc()
    model._model_impl.python_model.model = SimpleNamespace(  # the sizes that rule reads, no weights
        model_config=SimpleNamespace(downscale=4, patch_size=2), img_size=16)
    with pytest.raises(MlflowException) as raised:
        model.predict(pd.DataFrame({"prompt": ["a red circle"]}), params={"size": size})
    assert raised.value.message.startswith(message) and raised.value.error_code == "INVALID_PARAMETER_VALUE"


def test_over_rest_an_invalid_param_is_a_400_carrying_the_message():
    request = json.dumps({"dataframe_split": {"columns": ["prompt"], "data": [["a red circle"]]},
                          "params": {"steps": 0}})
    with pytest.raises(MlflowException) as raised:
        scoring_server.invocations(request, "application/json", pyfunc(), None)
    assert raised.value.get_http_status_code() == 400
    assert "params steps must lie within 1 and 10000, got 0" in json.loads(raised.value.serialize_as_json())["message"]


@pytest.mark.parametrize("seed", [1.5, "7", True])
def test_a_seed_that_is_not_an_integer_is_refused_even_without_the_signature(seed):
    """`predict` called on the model itself (no signature in between) took int(1.5) == 1 and made an image."""
    with pytest.raises(MlflowException) as raised:
        TextToImageModel().predict(None, pd.DataFrame({"prompt": ["a red circle"]}), params={"seed": seed})
    assert raised.value.message == f"params seed must be an integer, got {seed!r}"


@pytest.mark.parametrize(("device", "said"), [
    ("cuda", "model_config[\"device\"] is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')"),
    ("cuda:1", "model_config[\"device\"] is 'cuda:1' but no CUDA device is available (use 'auto' or 'cpu')"),
    ("bogus", "model_config[\"device\"] is 'bogus', not a device (use 'auto', 'cpu' or 'cuda')")])
def test_a_device_the_machine_lacks_is_named_as_model_config_set_it(device, said, monkeypatch):
    """It said ".../weights/model.safetensors does not fit .../config.json: training.device is 'cuda' ...": the
    weights blamed for the device, under a setting the caller never wrote."""
    import torch

    from fluxflow.runtime.device import DeviceUnavailable

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    context = SimpleNamespace(artifacts={"weights": "never read"}, model_config={"device": device})
    with pytest.raises(DeviceUnavailable) as raised:
        TextToImageModel().load_context(context)
    assert str(raised.value) == said


def drawing_pyfunc(monkeypatch) -> PyFuncModel:
    """pyfunc() with a model that 'draws' its prompt: generation stubbed, so the inputs' path through MLflow's schema
    enforcement and `predict` is what is tested."""
    import fluxflow.sampling.generate as generate
    from flows import pyfunc_model

    monkeypatch.setattr(generate, "generate", lambda model, prompt, seed, **_: prompt)
    monkeypatch.setattr(generate, "size_problem", lambda model, size: None)
    monkeypatch.setattr(pyfunc_model, "png_base64", lambda image: f"png of {image}")
    model = pyfunc()
    model._model_impl.python_model.model = SimpleNamespace(img_size=16)
    return model


@pytest.mark.parametrize("model_input", [
    pd.DataFrame({"prompt": ["a red circle", "a blue square"]}),
    ["a red circle", "a blue square"],  # was refused by MLflow: "Model is missing inputs ['prompt']"
    pd.Series(["a red circle", "a blue square"])])
def test_prompts_may_be_a_dataframe_a_list_or_a_series(model_input, monkeypatch):
    frame = drawing_pyfunc(monkeypatch).predict(model_input, params={"seed": 5})
    assert frame.to_dict("records") == [{"prompt": "a red circle", "seed": 5, "image": "png of a red circle"},
                                        {"prompt": "a blue square", "seed": 5, "image": "png of a blue square"}]


def test_one_prompt_may_be_a_plain_string(monkeypatch):
    frame = drawing_pyfunc(monkeypatch).predict("a red circle", params={"n": 2})
    assert frame.to_dict("records") == [{"prompt": "a red circle", "seed": 0, "image": "png of a red circle"},
                                        {"prompt": "a red circle", "seed": 1, "image": "png of a red circle"}]


def test_over_rest_a_list_of_prompts_as_inputs_is_answered(monkeypatch):
    answer = scoring_server.invocations(json.dumps({"inputs": ["a red circle"]}), "application/json",
                                        drawing_pyfunc(monkeypatch), None)
    assert json.loads(answer.response)["predictions"] == [
        {"prompt": "a red circle", "seed": 0, "image": "png of a red circle"}]


def test_a_frame_without_a_prompt_column_is_refused_naming_the_accepted_inputs(monkeypatch):
    with pytest.raises(MlflowException) as raised:
        drawing_pyfunc(monkeypatch).predict(pd.DataFrame({"text": ["a red circle"]}))
    assert raised.value.message == ("the prompts are a DataFrame whose first column is 'prompt', a list of strings, "
                                    "one string or a dict {'prompt': [...]}; got a DataFrame whose first column is "
                                    "'text'")


# MLflow's column-dict input: its schema enforcement made a frame of one row whose cell was the whole list, refused as
# "prompt 1 of 1 must be text, got ['a red circle', 'a blue square']".
@pytest.mark.parametrize("model_input", [{"prompt": ["a red circle", "a blue square"]},
                                         {"text": ["a red circle", "a blue square"]}])
def test_prompts_may_be_a_column_dict(model_input, monkeypatch):
    frame = drawing_pyfunc(monkeypatch).predict(model_input, params={"seed": 5})
    assert frame.to_dict("records") == [{"prompt": "a red circle", "seed": 5, "image": "png of a red circle"},
                                        {"prompt": "a blue square", "seed": 5, "image": "png of a blue square"}]


def test_over_rest_a_column_dict_as_inputs_is_answered(monkeypatch):
    answer = scoring_server.invocations(json.dumps({"inputs": {"prompt": ["a red circle", "a blue square"]}}),
                                        "application/json", drawing_pyfunc(monkeypatch), None)
    assert [row["prompt"] for row in json.loads(answer.response)["predictions"]] == ["a red circle", "a blue square"]


def test_a_column_dict_is_read_unwrapped_too(monkeypatch):
    drawing_pyfunc(monkeypatch)  # stubs generation
    model = TextToImageModel()
    model.model = SimpleNamespace(img_size=16)
    frame = model.predict(None, {"prompt": ["a red circle"]})
    assert frame.prompt.tolist() == ["a red circle"]
    with pytest.raises(MlflowException) as raised:
        model.predict(None, {"a": ["x"], "b": ["y"]})
    assert raised.value.message == "a dict of prompts has the key 'prompt' or a single key; got the keys ['a', 'b']"
