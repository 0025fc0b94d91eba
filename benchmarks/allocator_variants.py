"""glibc keeping freed memory (mallopt M_MMAP_MAX 0) against its default ceilings (mmap above 32 MiB,
trim above 64 MiB), alternated in one process on the WRN-28-2 fp32 channels_last model step: ms and
page faults per step (README, "Against the peer, side by side", allocator).

    python benchmarks/allocator_variants.py B ROUNDS STEPS
"""
import ctypes, resource, sys, time, torch
from debiaspl.models import build_model
libc = ctypes.CDLL("libc.so.6")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
def glibc_steady():  # glibc's dynamic thresholds at their ceiling: mmap above 32 MiB, trim above 64 MiB
    libc.mallopt(M_MMAP_MAX, 65536); libc.mallopt(M_MMAP_THRESHOLD, 32 << 20); libc.mallopt(M_TRIM_THRESHOLD, 64 << 20)
def keep_memory():
    libc.mallopt(M_MMAP_MAX, 0); libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
B, rounds, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
cl = torch.channels_last
model = build_model("wrn28_2", 10, 3).to(memory_format=cl).train()
x = torch.randn(B * 5, 3, 32, 32).contiguous(memory_format=cl); y = torch.randint(0, 10, (B * 5,))
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
def step():
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
for _ in range(2): step()
for r in range(rounds):
    order = [("glibc", glibc_steady), ("keep", keep_memory)]
    if r % 2: order.reverse()
    out = {}
    for name, setup in order:
        setup(); step()
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; t = time.perf_counter()
        for _ in range(n): step()
        out[name] = ((time.perf_counter() - t) / n * 1000, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / n)
    print(f"round {r+1}: " + "  ".join(f"{k} {v[0]:.0f} ms ({v[1]:.0f} faults/step)" for k, v in out.items())
          + f"  keep/glibc {out['keep'][0]/out['glibc'][0]:.3f}", flush=True)
print("max RSS MiB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
