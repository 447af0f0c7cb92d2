"""PyTorch backend: the run's student rebuilt with timm from its card (the reference engine).

The only runtime module that imports torch, and only inside its methods, so that
`import edgeft.runtime` works on a device that has numpy and its runtime alone.
The model is the plain timm classifier, like the ONNX export: it takes the normalised
input; `InputSpec.mean/std` come from the card.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.artifacts import StudentCard, read_json
from edgeft.errors import EdgeftError
from edgeft.runtime.base import Engine, InputSpec, median_by_layer


def student_files(path: Path) -> tuple[Path, Path]:
    """(card.json, model.safetensors) of a run dir, a student dir, or a weights/card file."""
    for folder in (path / "student", path, path.parent):
        card, weights = folder / "card.json", folder / "model.safetensors"
        if card.is_file() and weights.is_file():
            return card, weights
    raise EdgeftError(f"{path}: no student here (student/card.json + model.safetensors); pass a run directory")


class TorchEngine(Engine):
    """The student in eager PyTorch on CPU or CUDA."""

    name = "torch"
    format = "torch"
    suffixes = (".safetensors",)
    module = "torch"
    install = "torch"
    layer_profiler = "forward hooks on leaf modules (wall clock, synchronised on CUDA)"

    def open(self) -> None:
        card_path, weights = student_files(self.path)
        import timm
        import torch
        from safetensors.torch import load_file

        self.card = StudentCard.from_json(read_json(card_path))
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        want_cuda = self.options.device in ("auto", "cuda") and torch.cuda.is_available()
        if self.options.device == "cuda" and not want_cuda:
            raise EdgeftError("--device cuda: torch sees no CUDA device; use --device cpu")
        self._device = torch.device("cuda" if want_cuda else "cpu")
        model = timm.create_model(self.card.arch, num_classes=self.card.num_classes, exportable=True)
        try:
            model.load_state_dict(load_file(str(weights)))
        except RuntimeError as exc:
            raise EdgeftError(f"{weights}: does not match {self.card.arch} ({str(exc).splitlines()[0][:160]})") from None
        self._model = model.to(self._device).eval()
        self._spec = InputSpec("input", (None, *self.card.input_size), "float32", tuple(self.card.mean), tuple(self.card.std))

    def close(self) -> None:
        self._model = None

    @property
    def input_spec(self) -> InputSpec:
        return self._spec

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self._model(torch.from_numpy(batch).to(self._device)).float().cpu().numpy()

    def precision(self) -> str | None:
        return "fp32"

    def layer_times(self, batch: np.ndarray, runs: int) -> list[dict] | None:
        import torch

        x = torch.from_numpy(batch).to(self._device)
        sync = torch.cuda.synchronize if self._device.type == "cuda" else (lambda: None)
        current: list[tuple[str, str, float]] = []
        starts: dict[str, float] = {}

        def before(name):
            def hook(module, args):
                sync()
                starts[name] = time.perf_counter()
            return hook

        def after(name):
            def hook(module, args, output):
                sync()
                current.append((name, type(module).__name__, (time.perf_counter() - starts[name]) * 1e3))
            return hook

        leaves = [(n, m) for n, m in self._model.named_modules() if n and not list(m.children())]
        handles = [h for n, m in leaves for h in (m.register_forward_pre_hook(before(n)), m.register_forward_hook(after(n)))]
        per_run = []
        try:
            with torch.inference_mode():
                for i in range(runs + 1):
                    current = []
                    self._model(x)
                    if i:  # the first run warms up
                        per_run.append(current)
        finally:
            for handle in handles:
                handle.remove()
        return median_by_layer(per_run)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "device": str(self._device)}
