"""Resident memory after each phase of a run's start, read from /proc/self/status (Linux): importing torch,
then debiaspl, the first torch optimizer (it imports torch._dynamo), data, trainer, one batch, one training
step, one evaluation. VmHWM is the peak so far; RssAnon the process's own
memory; RssFile the mapped files (libraries, the decoded cache's pages).

    python benchmarks/memory_phases.py experiments/cifar10lt_cpu_debiaspl.yaml data.dataset=imagefolder \
        data.root=../shared/data/cifar10-jpeg train.device=cpu 'hooks=[]' [data.num_unlabeled_head=0]
    MALLOC_MMAP_THRESHOLD_=131072 python benchmarks/memory_phases.py ...   # glibc returns large blocks at once
"""
import sys


def report(phase: str) -> None:
    fields = {line.split(":")[0]: line.split(":")[1].strip() for line in open("/proc/self/status")
              if line.startswith(("VmHWM", "VmRSS", "RssAnon", "RssFile"))}
    print(f"{phase:10s} " + "  ".join(f"{key} {value}" for key, value in fields.items()), flush=True)


report("start")
import torch  # noqa: E402

report("torch")
from debiaspl.config import load_experiment  # noqa: E402
from debiaspl.data.prepare import prepare_data  # noqa: E402
from debiaspl.engine.trainer import Trainer  # noqa: E402

report("imports")
print(f"{len(sys.modules)} modules imported", flush=True)
torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # its first param group imports torch._dynamo
report("optimizer")
config = load_experiment(sys.argv[1], sys.argv[2:])
data = prepare_data(config.data)
report("data")
trainer = Trainer(config, data, torch.device(config.train.device if config.train.device != "auto" else "cpu"))
report("trainer")
batch = trainer.prepare_batch(*next(iter(trainer.loader(0, 1))))
report("batch")
trainer.train_step(batch)
report("step")
trainer.evaluate()
report("evaluate")
