"""Forward passes over a whole image set in batches: logits, penultimate features, MC Dropout passes."""

from __future__ import annotations

import torch
from torch import nn

from debiaspl.data.loaders import to_model_input


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                   batch_size: int, device: torch.device, with_features: bool = False,
                   keep_dropout: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Logits [N, C] float32 on the CPU for uint8 images [N, C, H, W] (and features [N, D] if asked).

    Eval mode (BatchNorm running statistics); `keep_dropout` leaves dropout layers sampling, for MC
    Dropout. The model's training mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    if keep_dropout:
        for module in model.modules():
            if isinstance(module, nn.modules.dropout._DropoutNd):
                module.train()
    logits_chunks, feature_chunks = [], []
    for start in range(0, len(images), batch_size):
        batch = to_model_input(images[start:start + batch_size].to(device, non_blocking=True), mean, std)
        if with_features:
            features = model.forward_features(batch)
            logits = model.classifier(model.dropout(features))
            feature_chunks.append(features.float().cpu())
        else:
            logits = model(batch)
        logits_chunks.append(logits.float().cpu())
    model.train(was_training)
    logits = torch.cat(logits_chunks)
    return (logits, torch.cat(feature_chunks)) if with_features else logits
