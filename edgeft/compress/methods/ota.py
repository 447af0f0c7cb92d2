"""OTA, One to Transfer All (§3.3): IRF → DIGG distillation → fine-tuning, and the reversed DIGG-IRF (§4.4.2).

`ota`: IRF adapts the teacher (the first `--teacher` gets a task head on VQGAN re-represented images
with its backbone frozen, then every layer is calibrated on the originals: methods/irf_stages.py); the
adapted teacher's pooled features are distilled into the student on the `--kd-data` images (DIGG by
default: methods/distillation.py); the student is fine-tuned on the few labelled images. The run's
teacher accuracy is the IRF-adapted teacher's.

`digg-irf` is the low-resource order of §3.3 and Table 9, for users who cannot fine-tune the large
model: the **un-adapted** teacher's backbone features are distilled into the student on DIGG images
first, then IRF transfers the small distilled student — its new head on the re-represented images
with its backbone frozen (delivering), then all of its layers on the originals (calibration). The
teacher is never trained, and IRF's calibration is the final fine-tuning (the same recipe as ota's).
Both need a pack with a latent transformer (`--kd-data digg`), whose VQGAN also serves IRF.
"""
from __future__ import annotations

from torch import nn

from edgeft.compress.methods.base import Method, TransferContext
from edgeft.compress.methods.common import finetune
from edgeft.compress.methods.distillation import digg_distill
from edgeft.compress.methods.irf_stages import CALIBRATE, adapt, adapt_first


class OneToTransferAll(Method):
    def fit(self, ctx: TransferContext) -> nn.Module:
        teacher, _, accuracy = adapt_first(ctx)
        ctx.notes["teacher_accuracy"] = accuracy
        ctx.notes["teacher_evaluated_as"] = "IRF-adapted"
        digg_distill(ctx, teacher.eval().requires_grad_(False))
        return finetune(ctx, recipe=CALIBRATE)


class DiggThenIrf(Method):
    def fit(self, ctx: TransferContext) -> nn.Module:
        digg_distill(ctx, ctx.teacher())  # the un-adapted teacher; then IRF transfers the distilled student
        student, _ = adapt(ctx, ctx.student_spec, ctx.student)
        return student
