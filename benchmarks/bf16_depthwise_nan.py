"""Three SGD steps of torchvision's shufflenet_v2_x0_5 on random 8 x 8 one-channel images (stage 3 then sees
1 x 1 inputs), in fp32 and under bf16 autocast, printing the parameters that hold NaN or inf after each step
(README, "Models": what was seen on an AMD EPYC with AVX512-BF16).

    python benchmarks/bf16_depthwise_nan.py [TRIES]
"""
import sys

import torch

from debiaspl.models import build_model

for trial in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
    for precision in ("fp32", "bf16"):
        torch.manual_seed(trial)
        model = build_model("torchvision:shufflenet_v2_x0_5", 10, 1, 0.0).to(memory_format=torch.channels_last).train()
        images = torch.randn(40, 1, 8, 8).contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, 10, (40,))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)
        for step in range(3):
            with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
                loss = torch.nn.functional.cross_entropy(model(images).float(), labels)
            optimizer.zero_grad()
            loss.backward()
            gradients_finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
            optimizer.step()
            bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
            print(f"try {trial} {precision} step {step}: loss {loss.item():.3f}, gradients finite "
                  f"{gradients_finite}, non-finite parameters {bad[:2]}", flush=True)
