"""Teaching one network what a pair of networks says (knowledge distillation).

The shipped pair is surer than either of its networks on pictures neither saw, but it costs two
networks on every suspicious frame (25 ms against the 15 ms budget). A single network trained to
also match the pair's image score on the augmented training pictures — where the two seeds
disagree, unlike on the plain training pictures, which both fit — may carry part of that over at
one network's cost. The teachers are the server's own `Detector`: the second network is asked
from the same gate and the two scores are averaged in logit space.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from layerfleet.detection.runtime import SECOND_OPINION_FROM, Detector, ModelMissing


class Teachers:
    """The image score of one network, or of a first network with its second opinion."""

    def __init__(self, paths: list[Path], threads: int, second_opinion_from: float = SECOND_OPINION_FROM) -> None:
        if not 1 <= len(paths) <= 2:
            raise SystemExit("--distill-from takes one model or a first model and its second opinion")
        for path in paths:
            if not path.is_file():
                raise SystemExit(f"no teacher model at {path}")
        try:
            self.detector = Detector(paths[0], threads=threads, second_opinion=paths[1] if len(paths) == 2 else None,
                                     second_opinion_from=second_opinion_from)
        except ModelMissing as exc:  # the two inputs differ
            raise SystemExit(str(exc)) from exc
        size = self.detector.session.get_inputs()[0].shape[-1]
        if not isinstance(size, int):
            raise SystemExit(f"the teacher {paths[0]} has no fixed input size ({size})")
        self.size = size

    @torch.no_grad()
    def image_scores(self, images: torch.Tensor) -> torch.Tensor:
        """(N,) failure probabilities for a training batch (N, 3, H, W) of letterboxed pixels;
        the batch is resized to the teachers' input as the runtime's letterbox would have."""
        small = F.interpolate(images.float(), size=(self.size, self.size), mode="bilinear",
                              align_corners=False, antialias=True).contiguous().numpy()
        return torch.from_numpy(self.detector.image_scores(small))

