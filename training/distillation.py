"""Teaching one network what a pair of networks says (knowledge distillation).

The shipped pair is surer than either of its networks on pictures neither saw, but it costs two
networks on every suspicious frame (25 ms against the 15 ms budget). A single network trained to
also match the pair's image score on the augmented training pictures — where the two seeds
disagree, unlike on the plain training pictures, which both fit — may carry part of that over at
one network's cost. The teachers are ONNX models run by ONNX Runtime, as the server runs them:
the second is asked from the same gate and the two scores are averaged in logit space
(`layerfleet.detection.runtime`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from layerfleet.detection.runtime import SECOND_OPINION_FROM, mean_in_logit_space


class Teachers:
    """The image score of one network, or of a first network with its second opinion."""

    def __init__(self, paths: list[Path], threads: int, second_opinion_from: float = SECOND_OPINION_FROM) -> None:
        import onnxruntime as ort

        if not 1 <= len(paths) <= 2:
            raise SystemExit("--distill-from takes one model or a first model and its second opinion")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.sessions = []
        for path in paths:
            if not path.is_file():
                raise SystemExit(f"no teacher model at {path}")
            self.sessions.append(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))
        sizes = {session.get_inputs()[0].shape[-1] for session in self.sessions}
        if len(sizes) != 1 or not isinstance(next(iter(sizes)), int):
            raise SystemExit(f"the teachers' input sizes differ or are not fixed: {sizes}")
        self.size = int(next(iter(sizes)))
        self.second_opinion_from = second_opinion_from

    @torch.no_grad()
    def image_scores(self, images: torch.Tensor) -> torch.Tensor:
        """(N,) failure probabilities for a training batch (N, 3, H, W) of letterboxed pixels;
        the batch is resized to the teachers' input as the runtime's letterbox would have."""
        small = F.interpolate(images.float(), size=(self.size, self.size), mode="bilinear",
                              align_corners=False, antialias=True).contiguous().numpy()
        first = self._score(0, small)
        if len(self.sessions) == 1:
            return torch.from_numpy(first)
        asked = first >= self.second_opinion_from
        scores = first.copy()
        if asked.any():
            second = self._score(1, np.ascontiguousarray(small[asked]))
            scores[asked] = [mean_in_logit_space([a, b]) for a, b in zip(first[asked], second, strict=True)]
        return torch.from_numpy(scores)

    def _score(self, index: int, pixels: np.ndarray) -> np.ndarray:
        session = self.sessions[index]
        output = session.run(["image_score"], {session.get_inputs()[0].name: pixels})[0]
        return np.asarray(output, dtype=np.float32)[:, 0]

