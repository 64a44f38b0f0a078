"""What one generation request may ask for: `fluxflow-generate`'s flags and the served model's params
(flows/pyfunc_model.py) follow these rules, each message naming the value as its caller's user spells it (`--steps`,
`params steps`). Torch-free: the CLI checks a request before it loads torch and the model."""
from __future__ import annotations

import math
import numbers
from typing import Any

from fluxflow.config.optim import INT64

# Sampler steps: a huge count overflowed, or filled the memory, in torch.
MAX_STEPS = 10_000
# Images per prompt: 10**8 spent minutes naming and checking its files before drawing one (and a served request
# answers all of them in one response). A larger set is several requests with later seeds.
MAX_IMAGES = 10_000
# The classifier-free guidance scale g of sampling (fluxflow/models/flow_sampler.py: v = v_uncond + g·(v_cond -
# v_uncond)): 0 ignores the prompt, 1 follows it without guidance, more pushes further from the unconditional image
# (default 3; docs/COMPOSITION.md found 1.5 to 6 alike). Far above the bound the product overflows float32: from
# about 1e30 every pixel was NaN, and the image written black.
GUIDANCE_MAX = 100


def _not_an_integer(name: str, value: Any) -> str | None:
    """A bool is no count or seed (True would be 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return f"{name} must be an integer, got {value!r}"
    return None


def count_problem(name: str, value: Any, most: int) -> str | None:
    """What is wrong with `value` as a whole number from 1 to `most`, or None."""
    if problem := _not_an_integer(name, value):
        return problem
    if not 1 <= value <= most:
        return f"{name} must lie within 1 and {most}, got {value}"
    return None


def seeds_problem(name: str, seed: Any, n: int = 1) -> str | None:
    """What is wrong with `seed` as the first of `n` image seeds seed..seed+n-1, or None: each must be a seed as a
    config's are (fluxflow.config.steps.Seed)."""
    if problem := _not_an_integer(name, seed):
        return problem
    if not 0 <= seed <= INT64 - n:
        return (f"{name} must lie within 0 and 2**63 - n (the images' seeds are seed..seed+n-1, each from 0 to "
                f"2**63 - 1 as a config's seeds); got {seed}")
    return None


def guidance_problem(name: str, guidance: Any) -> str | None:
    """What is wrong with `guidance` as a guidance scale, or None."""
    if isinstance(guidance, bool) or not isinstance(guidance, numbers.Real) or not math.isfinite(guidance):
        return f"{name} must be a finite number, got {guidance!r}"
    if not 0 <= guidance <= GUIDANCE_MAX:
        return (f"{name} must lie within 0 and {GUIDANCE_MAX} (0 ignores the prompt, 1 follows it without guidance, "
                f"more follows it more strongly); got {guidance:g}")
    return None


def prompt_problem(name: str, prompt: Any) -> str | None:
    """What is wrong with `prompt` as the words to draw, or None: a missing value (a JSON null, read as the text
    'None' before) and a blank one (an unset shell variable, say) draw nothing the user asked for."""
    if prompt is None or isinstance(prompt, float) and math.isnan(prompt):  # a DataFrame's null is NaN
        return f"{name} is missing (null): give the words to draw"
    if not isinstance(prompt, str):
        return f"{name} must be text, got {prompt!r}"
    if not prompt.strip():
        return f"{name} {prompt!r} is blank: give the words to draw"
    return None


def request_problem(spell, *, n: Any, steps: Any, seed: Any, guidance: Any) -> str | None:
    """The first problem of a request's numbers, or None. `spell(param)` is how the caller's user writes the param
    (`--n`, `params n`)."""
    return (count_problem(spell("n"), n, MAX_IMAGES) or count_problem(spell("steps"), steps, MAX_STEPS)
            or seeds_problem(spell("seed"), seed, n) or guidance_problem(spell("guidance"), guidance))
