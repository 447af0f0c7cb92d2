"""IRF, Image Re-representation Fine-tuning (OTA, Wu et al. 2022, §3.1 and §4.1.1).

Four stages, each resumable: priming, assembling, delivering and calibration (methods/irf_stages.py,
shared with ota and digg-irf). The model adapted is the teacher (the first `--teacher`; without one,
the `--student` model itself), so the run's model is the task-adapted teacher that
`--teacher-from RUN_DIR` hands to other methods.
"""
from __future__ import annotations

from torch import nn

from edgeft.compress.methods.base import Method, TransferContext
from edgeft.compress.methods.irf_stages import adapt_first


class ImageRerepresentationFineTuning(Method):
    def fit(self, ctx: TransferContext) -> nn.Module:
        model, spec, accuracy = adapt_first(ctx)
        ctx.student, ctx.student_spec = model, spec  # the run's model: its card and summary describe it
        ctx.notes["teacher_accuracy"] = accuracy
        ctx.notes["teacher_evaluated_as"] = "IRF-adapted"
        return model
