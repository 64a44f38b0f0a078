"""How a step's models run fast: backend switches, channels-last, DDP for flow steps, `torch.compile`.

`runnable_models` returns the modules the per-batch steps call (`StepContext.models`); the raw modules stay in
`Trainer.models`, where EMAs, checkpoints and samples read them, so state-dict keys never change.

- CUDA: TF32 matmuls and convolutions, `cudnn.benchmark` (fixed batch shapes: the autotuned kernels are reused).
- `training.activation_checkpointing`: every flow transformer block is recomputed in backward (memory for compute).
- `training.compile`: `module.compile()` per trained component, in place. The discriminator stays eager when R1 is
  on: R1 is a double backward and torch.compile cannot run one. Batch shapes are static (full batches only, text
  padded to `text_max_len`), so each component compiles once and no batch recompiles.
- Channels-last: only for the convolutional components, only when compiling on CUDA (eager CUDA GroupNorm gives
  back contiguous tensors, so in eager mode every norm would convert back and forth).
- Under torchrun, flow steps (fluxflow/train/data_parallel.py) train through DistributedDataParallel; the wrapper is
  compiled then, so that torch's DDP graph splitting overlaps the all-reduce with the backward.
"""
from __future__ import annotations

import torch
from torch import nn

from fluxflow.train.data_parallel import wrap_for_data_parallel

CONV_COMPONENTS = ("compressor", "expander", "discriminator")


def runnable_models(models: dict[str, nn.Module], step, training, device: torch.device,
                    trained: set[str]) -> dict[str, nn.Module]:
    """The modules the per-batch steps call: `models` with the trained ones wrapped (DDP) and compiled as
    `training` (TrainingConfig) says."""
    if "flow_processor" in models:
        models["flow_processor"].activation_checkpointing = training.activation_checkpointing
    eager = {"discriminator"} if step.gan_training and step.r1_gamma > 0 else set()
    compiled = sorted(trained - eager) if training.compile else []
    if device.type == "cuda":
        # TF32 matmuls (cuDNN convolutions use TF32 by default). This API, not the per-backend `fp32_precision`
        # one: inductor reads it back with get_float32_matmul_precision(), which warns when the two are mixed.
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.benchmark = True
        for name in set(compiled) & set(CONV_COMPONENTS):
            models[name].to(memory_format=torch.channels_last)
    runnable = {**models, **wrap_for_data_parallel(models, step, trained, device)}
    for name in compiled:
        runnable[name].compile()  # in place: the raw module's state_dict keys stay the same
    return runnable
