"""WRN-28-2 training steps (forward, loss, backward, SGD) on one fixed batch of B * 5 images, several
variants alternated in one process, ms per step printed per round. Variants: DTYPE-LAYOUT[-compile],
e.g. fp32-cl, bf16-nchw, fp32-cl-compile (README, "Against the peer, side by side").

    python benchmarks/model_step_variants.py B ROUNDS fp32-nchw,fp32-cl,bf16-cl,bf16-nchw STEPS
"""
import sys, time, torch
from debiaspl.models import build_model
B = int(sys.argv[1]); rounds = int(sys.argv[2]); configs = sys.argv[3].split(",")
setups = {}
for c in configs:
    dtype, layout, *rest = c.split("-")
    mf = torch.channels_last if layout == "cl" else torch.contiguous_format
    torch.manual_seed(0)
    model = build_model("wrn28_2", 10, 3).to(memory_format=mf).train()
    x = torch.randn(B * 5, 3, 32, 32).contiguous(memory_format=mf)
    y = torch.randint(0, 10, (B * 5,))
    fwd = torch.compile(model) if rest else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    def step(model=fwd, x=x, y=y, opt=opt, bf16=dtype == "bf16"):
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    t0 = time.perf_counter()
    for _ in range(2): step()
    print(c, "warm-up", round(time.perf_counter() - t0, 1), "s", flush=True)
    setups[c] = step
n = int(sys.argv[4]) if len(sys.argv) > 4 else 5
for r in range(rounds):
    order = configs if r % 2 == 0 else configs[::-1]
    out = {}
    for c in order:
        t = time.perf_counter()
        for _ in range(n): setups[c]()
        out[c] = (time.perf_counter() - t) / n * 1000
    print(f"round {r+1}: " + "  ".join(f"{c} {out[c]:.0f} ms" for c in configs), flush=True)
