"""The ComfyUI extension: registers the model folder and lists the nodes. Nothing else at import."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .instruction_encode import KontextMultiInstructionEncode
from .knobs import KontextInstructionGuidance, KontextInstructionSliders, KontextModulationStrength
from .kontinuous import KontinuousKontextApply, KontinuousKontextLoader
from .model_agnostic import KontextConditioningStrength, KontextEditVelocity
from .model_folder import register_model_folder
from .numeric import NumeriKontrolEdit, NumeriKontrolLoader
from .slideredit import SliderEditApply, SliderEditLoader
from .sweep.nodes import KontextStrengthSweep
from .sweep.output import KontextSaveSweep, KontextSweepPreview
from .sweep.sampler import KontextSweepSampler

NODES: list[type[io.ComfyNode]] = [KontinuousKontextLoader, KontinuousKontextApply, KontextMultiInstructionEncode,
                                   KontextModulationStrength, KontextInstructionSliders, KontextInstructionGuidance,
                                   KontextConditioningStrength, KontextEditVelocity,
                                   SliderEditLoader, SliderEditApply, NumeriKontrolLoader, NumeriKontrolEdit,
                                   KontextStrengthSweep, KontextSweepSampler, KontextSweepPreview, KontextSaveSweep]


class KontextSlidersExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> KontextSlidersExtension:
    return KontextSlidersExtension()


register_model_folder()
