"""A teacher's precomputed logits (CLIP's zero-shot ones, say) as the training signal of a student.

The paper's zero-shot setting, as the official `main_DebiasPL_ZeroShot.py` runs it: the train
images the teacher is confident about (max softmax >= `data.teacher_threshold`, its
`CLIPPseudoLabel0.95.csv`) form the labeled set, labelled with the teacher's argmax; every other
train image is unlabeled and trained with the base algorithm and DebiasPL; and where the student's
mask leaves an unlabeled image out, the teacher's label trains it instead if the teacher's
confidence reaches `data.teacher_fill_threshold` (the script's 0.3; see Algorithm.step).

The file is an .npz with `sample_ids` [N] (the ids debiaspl gives the train images: `train/CLASS/FILE`
below an image folder's root, `train/INDEX` for CIFAR, `digits/INDEX` for the digits) and `logits`
[N, C] in the dataset's class order; an optional `class_names` [C] is checked against the dataset's.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from debiaspl.errors import UserError

NO_TEACHER_LABEL = -1  # an unlabeled image whose teacher confidence is below the fill-in threshold


@dataclass(frozen=True)
class TeacherPredictions:
    """The teacher's argmax and its softmax probability for every train image, in the pool's order."""

    labels: torch.Tensor      # [N] int64
    confidence: torch.Tensor  # [N] float32

    def split(self, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """(labeled indices: confidence >= threshold, unlabeled indices: the rest), both ascending."""
        confident = (self.confidence >= threshold).numpy()
        return np.flatnonzero(confident).astype(np.int64), np.flatnonzero(~confident).astype(np.int64)

    def fill_in_labels(self, indices: np.ndarray, threshold: float) -> torch.Tensor:
        """[len(indices)] teacher labels of these images, NO_TEACHER_LABEL where its confidence < threshold."""
        index = torch.as_tensor(indices, dtype=torch.long)
        labels = self.labels[index]
        return torch.where(self.confidence[index] >= threshold, labels, torch.full_like(labels, NO_TEACHER_LABEL))


def read_teacher_logits(path: Path, pool_ids: list[str], class_names: list[str]) -> TeacherPredictions:
    """The teacher's predictions for the train pool `pool_ids`, from the .npz at `path` (module docstring)."""
    where = f"data.teacher_logits {path}"
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"sample_ids", "logits"} - set(archive.files)
            if missing:
                raise UserError(f"{where}: needs arrays sample_ids and logits; it has no {', '.join(sorted(missing))} "
                                f"(it holds {', '.join(archive.files) or 'nothing'})")
            ids, logits = archive["sample_ids"], archive["logits"]
            names = archive["class_names"] if "class_names" in archive.files else None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"{where}: cannot read it as an .npz of arrays: {exc}") from None
    if logits.ndim != 2 or logits.shape[0] != len(ids) or not np.issubdtype(logits.dtype, np.number):
        raise UserError(f"{where}: logits must be numbers of shape [N, C] with N = len(sample_ids) = {len(ids)}, "
                        f"got {logits.dtype} of shape {logits.shape}")
    if logits.shape[1] != len(class_names):
        raise UserError(f"{where}: logits have {logits.shape[1]} classes, the dataset has {len(class_names)}")
    if names is not None and [str(n) for n in names] != list(class_names):
        raise UserError(f"{where}: its class_names {[str(n) for n in names]} are not the dataset's {list(class_names)} "
                        f"(in this order)")
    row_of = {str(sample_id): row for row, sample_id in enumerate(ids.tolist())}
    if len(row_of) != len(ids):
        raise UserError(f"{where}: sample_ids has {len(ids) - len(row_of)} repeated ids")
    absent = [sample_id for sample_id in pool_ids if sample_id not in row_of]
    if absent:
        raise UserError(f"{where}: {len(absent)} of the {len(pool_ids)} train images have no logits, e.g. {absent[0]!r} "
                        f"(the dataset's ids look like {pool_ids[0]!r}, the file's like {str(ids[0]) if len(ids) else None!r})")
    rows = torch.as_tensor([row_of[sample_id] for sample_id in pool_ids], dtype=torch.long)
    probs = torch.softmax(torch.as_tensor(np.asarray(logits, dtype=np.float32))[rows], dim=-1)
    if not torch.isfinite(probs).all():
        raise UserError(f"{where}: logits hold NaN or infinite values")
    confidence, labels = probs.max(dim=-1)
    return TeacherPredictions(labels, confidence)
