"""The MLflow model of a registered pipeline step: a pyfunc whose `predict` turns prompts into images.

    model = mlflow.pyfunc.load_model("models:/fluxflow-quickstart@champion", model_config={"device": "cpu"})
    frame = model.predict(pd.DataFrame({"prompt": ["a red circle on a black background, center"]}),
                          params={"seed": 0, "n": 2, "steps": 25, "guidance": 3.0, "size": 0})
    # or model.predict(["a red circle", "a blue square"]), model.predict("a red circle"),
    # or model.predict({"prompt": ["a red circle", "a blue square"]})
    # columns prompt, seed, image (a base64 PNG: decode_image(frame.image[0]) gives the picture)

Over REST (`mlflow models serve -m models:/<name>@champion --env-manager local`), POST /invocations with
`{"dataframe_split": {"columns": ["prompt"], "data": [["a red circle"]]}, "params": {"seed": 0}}` answers
`{"predictions": [{"prompt": ..., "seed": 0, "image": "<base64 PNG>"}]}`; `{"inputs": ["a red circle"]}` is the same.

Each image is `fluxflow-generate`'s for the same checkpoint, prompt and seed (fluxflow.sampling.generate: EMA weights,
the trained text encoder), so a served image equals the file `fluxflow-generate --format png` writes, pixel for pixel
on the same device. The model is read from its artifact `weights`, the checkpoint's export (fluxflow/sampling/export.py,
which gives the same pixels and holds a pretrained text encoder's directory); the checkpoint travels too, as the
artifact `checkpoint` (what `fluxflow-generate --model` uses), and versions registered before `weights` existed load
from it. `model_config["device"]` (default `auto`: CUDA when present) says where it runs.

MLflow loads it through flows/pyfunc_code.py ("models from code"), with the project's code logged next to it as code
paths: where it is loaded or served, the packages of its requirements.txt are all it needs (flows/registry.py).
"""
from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from fluxflow.sampling.request import prompt_problem, request_problem

CHECKPOINT_ARTIFACT = "checkpoint"
CONFIG_ARTIFACT = "config"
WEIGHTS_ARTIFACT = "weights"
PROMPT = "prompt"

# The parameters of one request, with fluxflow-generate's defaults; size 0 means the checkpoint's training size.
PARAMS = ParamSchema([ParamSpec("seed", "long", 0), ParamSpec("n", "long", 1), ParamSpec("steps", "long", 25),
                      ParamSpec("guidance", "double", 3.0), ParamSpec("size", "long", 0)])
# The input is one unnamed string column: MLflow then makes a frame of a list of prompts or of one prompt (column 0)
# as of a DataFrame (its first column), where a column named `prompt` refused both ("Model is missing inputs").
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string")]),
    outputs=Schema([ColSpec("string", PROMPT), ColSpec("long", "seed"), ColSpec("string", "image")]),
    params=PARAMS,
)


def png_base64(image) -> str:
    """An image tensor `[C, H, W]` in [-1, 1] as the base64 text of a PNG file."""
    from fluxflow.sampling.sample_files import to_picture

    buffer = io.BytesIO()
    to_picture(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_image(text: str):
    """A base64 PNG of `predict` (or of a REST answer) as a PIL image."""
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(text)))


def column_dict_prompts(model_input) -> list | None:
    """The prompts of MLflow's column-dict input (`{"prompt": [...]}` in Python, `{"inputs": {"prompt": [...]}}` over
    REST), or None for any other input. The schema's one unnamed column turns such a dict into a frame of one row
    whose only cell is the whole list (it was then refused as "prompt 1 of 1 must be text, got [...]"); unwrapped
    (python_model.predict called directly) it is the dict itself. A dict of one key is read whatever the key."""
    if isinstance(model_input, dict):
        if PROMPT not in model_input and len(model_input) != 1:
            raise MlflowException(f"a dict of prompts has the key {PROMPT!r} or a single key; got the keys "
                                  f"{list(model_input)!r}", error_code=INVALID_PARAMETER_VALUE)
        values = model_input[PROMPT] if PROMPT in model_input else next(iter(model_input.values()))
        return [values] if isinstance(values, str) else list(values)
    if isinstance(model_input, pd.DataFrame) and model_input.shape == (1, 1):
        cell = model_input.iat[0, 0]
        if isinstance(cell, (list, tuple, np.ndarray, pd.Series)):
            return list(cell)
    return None


def prompts_of(model_input) -> list[str]:
    """The request's prompts: a DataFrame's `prompt` column, a list of strings or one string (which MLflow's schema
    enforcement hands over as a frame whose only column is 0), or a column dict (column_dict_prompts). A missing or
    blank one is refused, as fluxflow-generate refuses it (a JSON null was drawn as the text 'None')."""
    if (from_dict := column_dict_prompts(model_input)) is not None:
        model_input = from_dict
    elif isinstance(model_input, pd.DataFrame):
        if PROMPT not in model_input.columns and list(model_input.columns) != [0]:
            first = model_input.columns[0] if len(model_input.columns) else None
            raise MlflowException(f"the prompts are a DataFrame whose first column is {PROMPT!r}, a list of strings, "
                                  f"one string or a dict {{{PROMPT!r}: [...]}}; got a DataFrame whose first column "
                                  f"is {first!r}",
                                  error_code=INVALID_PARAMETER_VALUE)
        model_input = model_input[PROMPT if PROMPT in model_input.columns else 0]
    prompts = [model_input] if isinstance(model_input, str) else list(model_input)
    for i, prompt in enumerate(prompts):
        problem = prompt_problem(f"prompt {i + 1} of {len(prompts)}", prompt)
        if problem:
            raise MlflowException(problem, error_code=INVALID_PARAMETER_VALUE)
    return prompts


class TextToImageModel(PythonModel):
    """Prompts in, images out, with the EMA weights of the step's final checkpoint."""

    def load_context(self, context) -> None:
        from fluxflow.runtime.device import resolve_device
        from fluxflow.sampling.export import load_exported
        from fluxflow.sampling.generate import load_text_to_image

        device = (context.model_config or {}).get("device") or "auto"
        resolve_device(device, setting='model_config["device"]')  # named as the caller set it, before any loading
        if WEIGHTS_ARTIFACT in context.artifacts:
            self.model = load_exported(context.artifacts[WEIGHTS_ARTIFACT], device)
        else:  # a version registered before the export was logged with every version
            self.model = load_text_to_image(context.artifacts[CHECKPOINT_ARTIFACT], device=device)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from fluxflow.sampling.generate import generate, size_problem

        p = {spec.name: spec.default for spec in PARAMS.params} | (params or {})
        # fluxflow-generate's rules (fluxflow/sampling/request.py). Before, steps 0 answered with an image, n 0 with no
        # row at all and steps 10**12 with a traceback from torch's allocator, where fluxflow-generate exits 2; any
        # seed was taken, and one of 2**64 or more failed inside torch.
        problem = request_problem(lambda param: f"params {param}", n=p["n"], steps=p["steps"], seed=p["seed"],
                                  guidance=p["guidance"])
        if problem:
            # An MlflowException keeps its message over REST: the scoring server answers it with HTTP 400 and the
            # message, where any other exception becomes a 400 saying only "unexpected error".
            raise MlflowException(problem, error_code=INVALID_PARAMETER_VALUE)
        prompts = prompts_of(model_input)
        size = int(p["size"]) or self.model.img_size  # 0: the size it was trained at
        if wrong := size_problem(self.model, size):  # named as the request sets it, as its other params are
            raise MlflowException(f"params size {wrong}", error_code=INVALID_PARAMETER_VALUE)
        rows = []
        for prompt in prompts:
            for seed in range(int(p["seed"]), int(p["seed"]) + int(p["n"])):
                image = generate(self.model, prompt, seed, steps=int(p["steps"]), guidance=float(p["guidance"]),
                                 size=size)
                rows.append({PROMPT: prompt, "seed": seed, "image": png_base64(image)})
        return pd.DataFrame(rows, columns=[PROMPT, "seed", "image"])

