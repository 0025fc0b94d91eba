"""Classification metrics of a test set, including the long-tail view (many / medium / few shot).

Pure functions of logits and labels; the groups follow the labeled class counts, as in the
long-tailed SSL literature (DASO, ACR): the ~30% most frequent classes are "many", the ~30% least
frequent "few", the rest "medium".
"""

import torch


def shot_groups(labeled_counts: list[int]) -> dict[str, list[int]]:
    """Class indices of the many / medium / few groups, by labeled count (ties by class index)."""
    num_classes = len(labeled_counts)
    order = sorted(range(num_classes), key=lambda c: (-labeled_counts[c], c))
    edge = max(1, round(0.3 * num_classes)) if num_classes >= 3 else 0
    if edge == 0:
        return {"many": order, "medium": [], "few": []}
    return {"many": sorted(order[:edge]), "medium": sorted(order[edge:num_classes - edge]),
            "few": sorted(order[num_classes - edge:])}


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Recall of each class [C] (nan for a class absent from `labels`)."""
    correct = torch.bincount(labels[predictions == labels], minlength=num_classes).double()
    total = torch.bincount(labels, minlength=num_classes).double()
    return correct / total


def balanced_accuracy(class_acc: torch.Tensor) -> float:
    """Mean of per_class_accuracy over the classes present in the labels (the nan entries left out)."""
    return class_acc[~class_acc.isnan()].mean().item()


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, labeled_counts: list[int]) -> dict:
    """top1, balanced_acc, acc_many/medium/few (mean per-class accuracy of each group), class_acc [C].

    logits: [N, C], labels: [N]. Accuracies are fractions in [0, 1].
    """
    num_classes = logits.shape[1]
    predictions = logits.argmax(dim=1)
    class_acc = per_class_accuracy(predictions, labels, num_classes)
    metrics = {"top1": (predictions == labels).double().mean().item(), "balanced_acc": balanced_accuracy(class_acc)}
    for group, members in shot_groups(labeled_counts).items():
        values = class_acc[members]
        values = values[~values.isnan()]
        if len(values):
            metrics[f"acc_{group}"] = values.mean().item()
    metrics["class_acc"] = class_acc.tolist()
    return metrics
