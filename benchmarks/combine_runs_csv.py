"""Mean and sample std over seeds of runs.csv files that `debiaspl report` wrote for runs no longer in one folder
(a later file wins for a seed both hold), as markdown rows:

    python benchmarks/combine_runs_csv.py A/runs.csv B/runs.csv
"""
import csv, statistics, sys
rows = []
for path in sys.argv[1:]:
    rows += list(csv.DictReader(open(path)))
seen = {}
for r in rows:
    seen[(r["algorithm"], r["seed"])] = r  # later files win for a seed in both
metrics = ["top1", "acc_many", "acc_medium", "acc_few", "pseudo_kl_to_true"]
for stat in ("final", "median_last"):
    for alg in ("fixmatch", "fixmatch+debiaspl"):
        runs = [r for (a, s), r in sorted(seen.items()) if a == alg]
        cells = []
        for m in metrics:
            v = [float(r[f"{m}_{stat}"]) for r in runs]
            scale, d = (1, 3) if m == "pseudo_kl_to_true" else (100, 2)
            cells.append(f"{scale*statistics.fmean(v):.{d}f} ± {scale*statistics.stdev(v):.{d}f}")
        print(f"| {stat} | {alg} | {' '.join(r['seed'] for r in runs)} | " + " | ".join(cells) + " |")
    for alg in ("fixmatch", "fixmatch+debiaspl"):
        runs = [r for (a, s), r in sorted(seen.items()) if a == alg]
        print(alg, stat, [(r["seed"], r[f"top1_{stat}"], r[f"pseudo_kl_to_true_{stat}"]) for r in runs])
