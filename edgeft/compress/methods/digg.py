"""DIGG distillation (OTA §3.2, §4.2): distil the teacher into the student on images generated from the few.

The distillation images (`--kd-data`: DIGG images, upstream images or the few raw ones) and the
distillation stage are methods/distillation.py's, shared with ota and digg-irf. Then the student is
fine-tuned on the labelled few images with IRF's calibration recipe, as the paper fine-tunes "with
the same setting as §4.1.1 stage 4".
"""
from __future__ import annotations

from torch import nn

from edgeft.compress.methods.base import Method, TransferContext
from edgeft.compress.methods.common import finetune
from edgeft.compress.methods.distillation import digg_distill
from edgeft.compress.methods.irf_stages import CALIBRATE


class DiggDistillation(Method):
    def fit(self, ctx: TransferContext) -> nn.Module:
        digg_distill(ctx, ctx.teacher())
        return finetune(ctx, recipe=CALIBRATE)
