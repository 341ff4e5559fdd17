"""The anatomy-model protocol: where a layout writer gets a patient's head, lesion and rendered slices.

A writer asks its model for a head (``random_head``), a lesion of a kind (``random_lesion``), the planes of a
stack of slices (``plan``, from :class:`SliceSpec` in the phantom's terms) and the pixels of each plane
(``render``). Two models implement it: :class:`classeg.synthetic.phantom.PhantomModel` (shapes, no
dependency, the default) and :class:`classeg.synthetic.mni.MniModel` (the real MNI152 template, needs the
``synth`` extra); :func:`classeg.synthetic.layouts.anatomy_model` picks one by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class SliceSpec:
    """One slice of a stack as the phantom sees it: ``slice_pos`` in [0, 1] along the head (0 bottom, 1 top)
    and ``lesion_scale`` in (0, 1] for a slice through the lesion (1 its widest section), None for a slice
    without it. A model with real 3-D anatomy may place the planes differently (see ``plan``)."""

    slice_pos: float
    lesion_scale: float | None = None


class AnatomyModel(Protocol):
    name: str

    def random_head(self, rng: np.random.Generator) -> Any:
        """One patient's head: geometry and scanner appearance."""

    def jitter(self, head: Any, rng: np.random.Generator) -> Any:
        """The same head, slightly re-positioned (another scan of one subject)."""

    def random_lesion(self, rng: np.random.Generator, *, kind: str) -> Any:
        """A lesion of ``kind`` (one of LESION_KINDS) at the place typical for that kind."""

    def plan(self, head: Any, lesion: Any, specs: Sequence[SliceSpec]) -> list:
        """The planes of a stack, one per spec, in order; draws no random numbers."""

    def render(self, rng: np.random.Generator, *, size: int, head: Any, lesion: Any, plane: Any,
               contrasts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``image`` float32 (size, size, len(contrasts)) in [0, 1] and ``mask`` bool (size, size), exactly the
        pixels rendered as lesion."""

    def slice_info(self, head: Any, plane: Any, size: int) -> dict:
        """Extra truth keys of a rendered slice (none for the phantom)."""
