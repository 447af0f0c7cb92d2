"""Transfer methods, one module each, listed in `METHODS` without importing them.

`METHODS` maps each name to a light `MethodEntry` (summary, whether it needs a teacher, where
its class lives, its options), so that `edgeft methods`, `--help` and option checks answer without
torch; the method's module is imported by `MethodEntry.load()`, when a run needs it. A new method is
its module plus one registration here (with an `Options` dataclass when it has options).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from edgeft.compress.methods.options import (AftOptions, DiggOptions, DistillOptions, IrfOptions, KdepOptions,
                                             KdOptions, NoOptions, OtaOptions)
from edgeft.errors import ConfigError
from edgeft.registry import Registry


@dataclass(frozen=True)
class MethodEntry:
    """One registered method: what `edgeft methods` shows and where its class is."""

    summary: str
    where: str  # "module:Class", imported on load()
    needs_teacher: bool = False
    options: type = NoOptions  # the method's own options (edgeft.compress.methods.options)

    def load(self) -> type:
        """Imports the method's module (torch and all) and returns its `Method` subclass."""
        module, _, name = self.where.partition(":")
        return getattr(importlib.import_module(module), name)


METHODS: Registry[MethodEntry] = Registry("method")
_PKG = "edgeft.compress.methods"


def _add(name: str, where: str, summary: str, *, teacher: bool = False, options: type = NoOptions,
         aliases: tuple[str, ...] = ()) -> None:
    METHODS.add(name, MethodEntry(summary, f"{_PKG}.{where}", teacher, options), aliases=aliases)


_add("stl", "baselines:FineTune", "standard transfer learning: fine-tune the whole student on the few data",
     aliases=("finetune", "fine-tune"))
_add("lp", "baselines:LinearProbe", "linear probe: frozen student backbone, train the classifier only",
     aliases=("linear-probe",))
_add("lp-ft", "baselines:LinearProbeThenFineTune",
     "LP-FT (Kumar et al. 2022): linear probe, then fine-tune everything at a lower lr")
_add("kd", "baselines:LogitDistillation",
     "Hinton KD: CE + T²·KL to the teacher's logits (teacher head trained on the few data first)", teacher=True,
     options=KdOptions)
_add("fkd", "baselines:FeatureDistillation", "feature KD (FitNets-style, the papers' KD baseline): L2 to teacher "
     "features via a linear projector, then fine-tune", teacher=True, options=DistillOptions,
     aliases=("fitnets",))
_add("aft", "aft:AdaptiveFeatureTransfer",
     "AFT: fine-tune with CE + β·kernel distance to cached teacher features with learned weights", teacher=True,
     options=AftOptions)
_add("kdep", "kdep:DistillationAsPretraining", "KDEP: distil pre-ReLU teacher features (SVD + PTS) into the "
     "student on unlabeled images, then fine-tune", teacher=True, options=KdepOptions)
_add("irf", "irf:ImageRerepresentationFineTuning", "OTA's IRF: head trained on VQGAN re-represented images "
     "(frozen backbone), then all layers on the originals", options=IrfOptions)
_add("digg", "digg:DiggDistillation", "OTA's DIGG: distil teacher features on images generated from the few "
     "(pack with transformer), then fine-tune", teacher=True, options=DiggOptions)
_add("ota", "ota:OneToTransferAll", "OTA: IRF-adapt the teacher, distil it on DIGG images (--pack with "
     "transformer), fine-tune the student", teacher=True, options=OtaOptions, aliases=("irf-digg",))
_add("digg-irf", "ota:DiggThenIrf", "DIGG-IRF (low-resource OTA): distil the un-adapted teacher on DIGG images, "
     "then IRF on the student", teacher=True, options=OtaOptions)

def method_entry(name: str) -> MethodEntry:
    """The registered method `name` (or alias); an unknown one is a ConfigError naming --method."""
    try:
        return METHODS.get(name)
    except ConfigError as exc:
        raise ConfigError(f"--method {name}: {exc}; list them with `edgeft methods`") from None


__all__ = ["METHODS", "MethodEntry", "method_entry"]
