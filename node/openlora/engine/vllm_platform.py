"""vLLM's CPU platform with our multi-LoRA op, selected through vLLM's platform-plugin entry point.

    pyproject: [project.entry-points."vllm.platform_plugins"] openlora_cpu = …:activate
    vLLM (parent and engine-core child) ─► activate() ─► CPU build? ─► OpenLoraCpuPlatform
        OPENLORA_VLLM_LORA_OPS=grouped (set by VllmEngine, inherited by vLLM's spawned child):
            get_punica_wrapper ─► engine/vllm_punica.PunicaWrapperGrouped
            check_and_update_config ─► torch.compile stays on with LoRA (our op is opaque to it)
        unset or "vllm": exactly vLLM's CpuPlatform (its torch ops, compilation off with LoRA)

GPU builds never activate it (vLLM's own kernels serve LoRA there). The plugin is written for the
vLLM series in :data:`openlora.engine.vllm_engine.VLLM_SERIES`; another series fails at start.
"""

from __future__ import annotations

import os

import vllm
from vllm.platforms.cpu import CpuPlatform

from .vllm_engine import LORA_OPS, LORA_OPS_ENV, VLLM_SERIES


def activate() -> str | None:
    """vLLM platform-plugin hook: our platform's qualified name on a CPU build of vLLM, else None."""
    from vllm.platforms import cpu_platform_plugin

    return "openlora.engine.vllm_platform.OpenLoraCpuPlatform" if cpu_platform_plugin() else None


def lora_ops() -> str:
    """The CPU LoRA ops this process runs (``grouped`` or ``vllm``).

    Raises:
        ValueError: the environment names something else.
    """
    ops = os.environ.get(LORA_OPS_ENV) or "vllm"
    if ops not in LORA_OPS:
        raise ValueError(f"{LORA_OPS_ENV}={ops!r}: expected one of {', '.join(LORA_OPS)}")
    return ops


if not vllm.__version__.startswith(VLLM_SERIES):
    raise RuntimeError(f"openlora's vLLM CPU platform is written for vLLM {VLLM_SERIES}x, not {vllm.__version__}")


class OpenLoraCpuPlatform(CpuPlatform):
    """vLLM's CpuPlatform; with ``grouped`` ops, our punica wrapper and compilation kept on."""

    @classmethod
    def get_punica_wrapper(cls) -> str:
        """Our wrapper's qualified name under ``grouped`` ops, else vLLM's."""
        if lora_ops() == "grouped":
            return "openlora.engine.vllm_punica.PunicaWrapperGrouped"
        return super().get_punica_wrapper()

    @classmethod
    def check_and_update_config(cls, vllm_config) -> None:
        """vLLM's checks; under ``grouped`` ops with LoRA on, torch.compile stays on.

        vLLM's CPU platform turns compilation off when LoRA is on (its torch ops have data-dependent
        shapes); ours are one opaque custom op, so the model compiles as it does without LoRA.
        """
        lora = vllm_config.lora_config
        if lora is None or lora_ops() != "grouped":
            return super().check_and_update_config(vllm_config)
        vllm_config.lora_config = None
        try:
            super().check_and_update_config(vllm_config)
        finally:
            vllm_config.lora_config = lora
