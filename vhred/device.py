"""Where the model runs and in which precision.

`precision=auto` takes what measured fastest. On one H100 (torch 2.11, batch 32; see the README's
GPU section) fp32 with TF32 matmuls trained faster than bf16 autocast (113k vs 86k target tok/s at
the reference sizes): at small batches the step is bound by kernel launches and the casts
autocast adds, not by matmul throughput. bf16 won at batch 512 (501k vs 452k). So auto means
bf16 on a bf16-capable GPU from BF16_MIN_BATCH dialogues per step, fp32 (TF32 matmuls)
below that, and fp32 on CPUs, where bf16 was not faster either (README, "Precision").
"""
import re

import torch

from .errors import ConfigError

BF16_MIN_BATCH = 256   # per-process batch from which bf16 autocast beats fp32+TF32 on a GPU


def pick_device(name: str = "auto") -> torch.device:
    """"auto" (a CUDA GPU when one is visible, else the CPU), "cpu" or "cuda"."""
    if name not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d{1,4})?", name):   # torch's own error is a traceback
        raise ConfigError(f"device must be auto, cpu or cuda (cuda:N for the N-th GPU), got '{name}'")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible; use device=auto or device=cpu")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"device={name}, but this machine has {torch.cuda.device_count()} GPU(s), "
                          f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def use_tf32_for_training(device: torch.device) -> None:
    """fp32 matmuls on tensor cores (TF32): the fp32 training step's speed on a GPU. Set by the
    trainer only: loading a model (vhred.load, chat, evaluation) leaves torch's defaults, so an
    "fp32" evaluation is fp32. The setting is process-wide, as torch keeps it."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def use_bf16(precision: str, device: torch.device, batch_size: int) -> bool:
    """Whether the training step runs under bf16 autocast (weights, gradients and the optimiser
    stay fp32; the latent parameters and the losses are computed in fp32 either way)."""
    if precision == "auto":   # native bf16 only: emulated bf16 (V100, T4) is slower than fp32
        return (device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
                and batch_size >= BF16_MIN_BATCH)
    return precision == "bf16"
