"""The `debiaspl` command: train experiments; evaluate, explain and extend trained runs; show configs.

User mistakes (a bad key, a missing file) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from debiaspl import __version__
from debiaspl.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="debiaspl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"debiaspl {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True)

    train = verbs.add_parser("train", help="train one or more experiments (resumes existing run folders)")
    train.add_argument("experiments", nargs="*", type=Path, help="experiment YAML files, run one after another")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.steps=1000 or --set hooks.drift.interval=100 "
                            "(hooks.NAME={} adds a hook, hooks.NAME=null removes one; repeatable)")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR",
                       help="continue the run in RUN_DIR with the config saved there")
    train.add_argument("--until-step", type=int, metavar="STEP",
                       help="pause after this step (checkpointed); the same command continues later")

    sweep = verbs.add_parser("sweep", help="train a grid of runs (settings x seeds) one after another; "
                                           "finished runs are skipped, stopped ones resume")
    sweep.add_argument("experiment", type=Path, help="the experiment YAML file every run starts from")
    sweep.add_argument("--seeds", metavar="LIST", help="train.seed values: 0,1,2 or 0-2 (default: the file's seed)")
    sweep.add_argument("--set-grid", dest="grid", action="append", default=[], metavar="KEY=V1,V2",
                       help="one grid axis, e.g. --set-grid algorithm.name=fixmatch,fixmatch+debiaspl (repeatable: "
                            "the runs are every combination)")
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value in every run (repeatable)")
    sweep.add_argument("--until-step", type=int, metavar="STEP",
                       help="pause every run after this step; the same command continues them later")
    sweep.add_argument("--dry-run", action="store_true", help="list the runs and their state, train nothing")

    report = verbs.add_parser("report", help="tables (mean +/- std over seeds) and learning curves of finished runs")
    report.add_argument("runs", nargs="+", type=Path, help="run folders, or folders that hold them (searched below)")
    report.add_argument("--last", type=int, default=20, help="the median statistic takes the last this many evaluations")
    report.add_argument("--out", type=Path, help="where report.md, report.csv, runs.csv and curves.png go "
                                                 "(default: FIRST_RUNS_FOLDER/report)")

    zero_shot = verbs.add_parser("debias-logits", help="zero-shot DebiasPL: debias the pseudo-labels of a fixed "
                                                      "model from its saved logits")
    zero_shot.add_argument("logits", type=Path, help="a .npy array of logits [N, C] (read memory-mapped, batch by batch)")
    zero_shot.add_argument("--tau", type=float, default=0.4, help="strength of the debiasing (0: the plain argmax)")
    zero_shot.add_argument("--momentum", type=float, default=0.99, help="momentum of the class-marginal estimate q_hat")
    zero_shot.add_argument("--batch-size", type=int, default=256, help="rows per q_hat update")
    zero_shot.add_argument("--labels", type=Path, help="a .npy array of true labels [N]: report accuracy before and after")
    zero_shot.add_argument("--threshold", type=float, help="also report the fraction (and accuracy) with confidence >= this")
    zero_shot.add_argument("--seed", type=int, default=0, help="seed of the random order the rows are streamed in")
    zero_shot.add_argument("--file-order", action="store_true",
                           help="stream the rows in file order instead (only if the file is not sorted by class)")
    zero_shot.add_argument("--passes", type=int, default=1, choices=(1, 2),
                           help="2: a first pass only estimates q_hat, so the first rows are debiased as much as the last")
    zero_shot.add_argument("--out", type=Path, help="the .npz to write (default: LOGITS.debiased.npz, with a .json summary)")

    show = verbs.add_parser("config", help="print the resolved config of an experiment, or the reference")
    show.add_argument("experiment", nargs="?", type=Path)
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    show.add_argument("--reference", action="store_true", help="print every key with its default and meaning")
    show.add_argument("--protocols", action="store_true",
                      help="print what each `protocol:` sets, side by side (the README's table)")

    evaluate = verbs.add_parser("eval", help="test metrics, calibration, MC Dropout and OOD detection of a run")
    _run_arguments(evaluate)
    evaluate.add_argument("--mc-dropout", type=int, default=0, metavar="T",
                          help="T stochastic passes: predictive/expected entropy, mutual information (BALD), variance")
    evaluate.add_argument("--ood", action="append", default=[], metavar="SPEC",
                          help="out-of-distribution test images: imagefolder:PATH, cifar10:ROOT, cifar100:ROOT or digits")
    evaluate.add_argument("--noise-std", type=float, default=0.2,
                          help="std of the Gaussian noise (in [0, 1] pixel units) of the corrupted test copy")
    evaluate.add_argument("--uncertainty-threshold", type=float, default=0.5,
                          help="normalized entropy splitting the test images into low- and high-uncertainty groups")
    evaluate.add_argument("--ood-classes", default="", metavar="A,B",
                          help="treat these classes of the test set as out-of-distribution (names or indices)")

    influence = verbs.add_parser("influence", help="TracIn over the run's snapshots: self-influence of each sample, "
                                                   "proponents and opponents of test images, clusters within a class")
    _run_arguments(influence)
    influence.add_argument("--split", choices=("labeled", "unlabeled", "both"), default=None,
                           help="labeled: under the training labels; unlabeled: under the run's pseudo-labels and loss; "
                                "both (the default with --test and --cluster; self-influence takes one, labeled by default)")
    influence.add_argument("--test", default="", metavar="IDX[,IDX...]",
                           help="proponents and opponents of these test images (indices into the test set), "
                                "with their nearest neighbours in the embedding")
    influence.add_argument("--k", type=int, default=8, help="with --test: proponents, opponents and neighbours shown")
    influence.add_argument("--cluster", default="", metavar="CLASS",
                           help="cluster this class (its labeled images and those pseudo-labeled with it) by TracIn similarity")
    influence.add_argument("--clusters", type=int, default=4, help="with --cluster: how many clusters")
    influence.add_argument("--max-images", type=int, default=5000,
                           help="with --cluster: cluster at most this many images (an evenly spaced subset)")
    influence.add_argument("--layers", default="", metavar="PREFIXES",
                           help="also the full-gradient form for parameters whose names start with these "
                                "(comma-separated, e.g. classifier,block3)")
    influence.add_argument("--top", type=int, default=10, help="print this many most self-influential samples")

    select = verbs.add_parser("select", help="pick unlabeled images to annotate next (active learning)")
    _run_arguments(select)
    select.add_argument("--strategy", required=True, choices=STRATEGY_CHOICES)
    select.add_argument("--k", type=int, required=True, help="how many images to select")
    select.add_argument("--balance", action="store_true",
                        help="spread the selection over predicted classes with quotas proportional to 1 / q_hat")
    select.add_argument("--mc-dropout", type=int, default=20, metavar="T", help="passes for --strategy bald")
    select.add_argument("--seed", type=int, default=0, help="seed of --strategy random")
    select.add_argument("--oracle", action="store_true",
                        help="fill the label column with the hidden true labels (for simulations)")
    select.add_argument("--out", type=Path, help="CSV path (default: RUN/selection/STRATEGY_kK.csv)")

    args = parser.parse_args(argv)
    if not sys.stdout.isatty() and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # a log file follows the run line by line, not 8 KiB at a time
    try:
        if args.verb == "train":
            return _train(args)
        if args.verb == "sweep":
            return _sweep(args)
        if args.verb == "debias-logits":
            return _debias_logits(args)
        if args.verb == "report":
            from debiaspl.analysis.report import write_report

            markdown, out = write_report(args.runs, args.out, args.last)
            print(markdown + f"\nwritten to {out}: report.md, report.csv, runs.csv, curves.png")
            return 0
        if args.verb in ("eval", "influence", "select"):
            return _offline(args)
        return _config(args, parser)
    except UserError as exc:
        print(f"debiaspl: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only folder, a permission: the file and the errno, one line
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"debiaspl: error: {where}{exc.strerror or exc} (errno {exc.errno}); checkpoints already written "
              f"stay whole", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("debiaspl: interrupted; the last checkpoint is kept, run the same command to resume", file=sys.stderr)
        return 130


def _train(args: argparse.Namespace) -> int:
    from debiaspl.config import load_experiment, load_saved_config
    from debiaspl.run_folder import CONFIG_NAME, require_run_folder

    _check_until_step(args.until_step)
    if args.resume is not None:
        if args.experiments:
            # One line that says what to type instead: argparse's usage block would not.
            raise UserError(f"--resume takes a run folder and no experiment file: run `debiaspl train --resume "
                            f"{args.resume}` (settings come from the run's config.yaml; add --set only for those "
                            f"that change how it runs, e.g. train.device), or `debiaspl train "
                            f"{' '.join(map(str, args.experiments))}` alone, which resumes that experiment's run folder")
        # resolved: `--resume .` names the folder by its real name; a run killed before its first
        # checkpoint has only its config.yaml and starts again from step 0
        args.resume = require_run_folder(args.resume, needs_checkpoint=False)
        saved = args.resume / CONFIG_NAME
        # The saved config names its own run folder; point it at the one given here.
        overrides = [f"logging.run_dir={args.resume.parent}", f"logging.run_name={args.resume.name}", *args.overrides]
        configs = [load_saved_config(saved, overrides)]
    elif args.experiments:
        configs = [load_experiment(path, args.overrides) for path in args.experiments]
    else:
        raise UserError("train: name at least one experiment file (`debiaspl train EXPERIMENT.yaml`), "
                        "or continue a run with `debiaspl train --resume RUN_DIR`")
    _train_all(configs, args.until_step)
    return 0


def _check_until_step(until_step: int | None) -> None:
    """Checked before any config loads or folder is made, for train and sweep alike."""
    if until_step is not None and until_step < 1:
        raise UserError(f"--until-step {until_step}: must be a positive step, the one to pause after (it is "
                        f"checkpointed; the same command continues); leave it out to train to train.steps")


def _sweep(args: argparse.Namespace) -> int:
    from debiaspl.engine.run import preflight, run_folder, run_state
    from debiaspl.engine.sweep import grid_settings, parse_grid_axis, parse_seeds, sweep_configs

    _check_until_step(args.until_step)
    axes = [parse_grid_axis(text) for text in args.grid]
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    configs, notes = sweep_configs(args.experiment, args.overrides, axes, seeds)
    for note in notes:
        print(f"sweep: {note}")
    if args.dry_run:
        for config in configs:
            preflight(config)  # the state shown is what training would find, not a run it would refuse
            print(f"{run_folder(config)}  {run_state(config)}")
        return 0
    print(f"sweep: {len(configs)} runs in {run_folder(configs[0]).parent}")
    _train_all(configs, args.until_step, [grid_settings(config, axes) for config in configs])
    print(f"\ntables and learning curves: debiaspl report {run_folder(configs[0]).parent}")
    return 0


def _debias_logits(args: argparse.Namespace) -> int:
    from debiaspl.analysis.debias_logits_run import debias_logits_file

    summary, out = debias_logits_file(args.logits, tau=args.tau, momentum=args.momentum, batch_size=args.batch_size,
                                      labels_path=args.labels, threshold=args.threshold,
                                      seed=None if args.file_order else args.seed, passes=args.passes,
                                      out=args.out)
    print(f"{summary['samples']} samples, {summary['classes']} classes, {summary['batches']} batches of "
          f"{summary['batch_size']} ({summary['order']}, {summary['passes']} pass{'es' if summary['passes'] > 1 else ''}), "
          f"tau {summary['tau']}, momentum {summary['momentum']}")
    for name in summary["after"]:
        before, after = summary["before"][name], summary["after"][name]
        print(f"  {name:26s} before {before:8.4f}   after {after:8.4f}")
    if "note" in summary:
        print(f"note: {summary['note']}")
    print(f"written to {out} (pseudo_label, confidence, plain_label, plain_confidence, class_marginal) "
          f"and {out.with_suffix('.json')}")
    return 0


def _train_all(configs: list, until_step: int | None, settings: list[list[str]] | None = None) -> None:
    """Train the configs one after another, after checking all of them, and print their final metrics.

    With several runs (or a sweep's, whose `settings` are each run's grid values), a line before each
    run's output names the run it belongs to.
    """
    from debiaspl.engine.distributed import Distributed
    from debiaspl.engine.run import preflight, run_folder, train_run, varying_hyperparameters

    folders = [str(run_folder(c)) for c in configs]
    if len(set(folders)) != len(folders):
        raise UserError(f"two runs would write to the same run folder ({', '.join(folders)}); "
                        f"give them different file names or logging.run_name")
    for config in configs:  # a mistake in the last experiment should not wait for the first to train
        preflight(config)
    varying, announce = varying_hyperparameters(configs), (len(configs) > 1 or settings is not None)
    results = []
    for index, config in enumerate(configs):
        if announce and Distributed.from_environment().is_main:
            shown = f"  [{' '.join(settings[index])}]" if settings is not None else ""
            print(("\n" if index else "") + f"== run {index + 1}/{len(configs)}: {config.logging.run_name} "
                  f"({folders[index]}){shown} ==")
        results.append(train_run(config, until_step, varying))
    _print_summary(results)


STRATEGY_CHOICES = ("least_confidence", "margin", "entropy", "bald", "random", "ambiguity", "self_influence")


def _run_arguments(verb: argparse.ArgumentParser) -> None:
    verb.add_argument("run", type=Path, help="a run folder (runs/NAME)")
    verb.add_argument("--weights", choices=("ema", "model"), default="ema",
                      help="the EMA weights (what training evaluated) or the raw model's")
    verb.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    verb.add_argument("--data-root", help="where the run's data is now, if it moved since training")
    verb.add_argument("--batch-size", type=int, default=256)


def _offline(args: argparse.Namespace) -> int:
    import json

    from debiaspl.analysis.load_run import load_run

    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    if getattr(args, "mc_dropout", 0) and args.mc_dropout < 2:  # eval and select have it
        raise UserError(f"--mc-dropout {args.mc_dropout}: needs at least 2 passes (0 turns it off)")
    run = load_run(args.run, args.weights, args.device, args.data_root)
    if args.verb == "eval":
        from debiaspl.analysis.evaluate_run import evaluate_run

        ood_classes = tuple(name for name in args.ood_classes.split(",") if name)
        metrics = evaluate_run(run, mc_passes=args.mc_dropout, ood_specs=tuple(args.ood), ood_classes=ood_classes,
                               batch_size=args.batch_size, noise_std=args.noise_std,
                               uncertainty_threshold=args.uncertainty_threshold)
        shown = {key: value for key, value in metrics.items() if not isinstance(value, (list, dict))}
        print(json.dumps(shown, indent=2))
        for name, report in metrics.get("ood", {}).items():
            print(f"OOD {name}: " + "  ".join(f"{score} AUROC {m['auroc']:.3f} FPR95 {m['fpr_at_95_tpr']:.3f}"
                                               for score, m in report.items() if isinstance(m, dict)))
        view = metrics["uncertainty"]
        print(f"normalized entropy <= {view['threshold']}: {view['low']['count']} test images, accuracy "
              f"{view['low']['accuracy']:.4f}; above: {view['high']['count']}, accuracy {view['high']['accuracy']:.4f}")
        print(f"written to {run.run_dir / 'eval'}")
    elif args.verb == "influence":
        from debiaspl.analysis.influence_run import (output_path, proponents_and_opponents, self_influence,
                                                     tracin_clusters)

        layers = tuple(name for name in args.layers.split(",") if name)
        if args.test and args.cluster:
            raise UserError("--test and --cluster: give one of them per call")
        if args.test:
            try:
                indices = [int(text) for text in args.test.split(",") if text.strip()]
            except ValueError:
                raise UserError(f"--test {args.test!r}: expected test-set indices like 3,17") from None
            for path in proponents_and_opponents(run, indices, k=args.k, split=args.split or "both", layers=layers,
                                                 batch_size=args.batch_size):
                print(f"written to {path} and {path.with_name(path.stem + '_gallery.png')}")
            return 0
        if args.cluster:
            if layers:
                raise UserError("--layers with --cluster: the clustering uses the last-layer gradients only")
            path = tracin_clusters(run, args.cluster, num_clusters=args.clusters, split=args.split or "both",
                                   max_images=args.max_images, batch_size=args.batch_size)
            print(f"written to {path} and {path.with_name(path.stem + '_gallery.png')}")
            return 0
        split = args.split or "labeled"
        if split == "both":
            raise UserError("--split both: self-influence ranks one set; give labeled or unlabeled")
        result = self_influence(run, split=split, layers=layers, batch_size=args.batch_size)
        images = run.data.labeled if split == "labeled" else run.data.unlabeled
        for index in result["last_layer"].argsort(descending=True)[:args.top].tolist():
            print(f"{images.sample_ids[index]}  self-influence {result['last_layer'][index]:.4g}  "
                  f"loss {result['loss'][index]:.3f}")
        print(f"written to {output_path(run.run_dir, split)}")
    else:
        from debiaspl.analysis.select_run import select_samples

        path = select_samples(run, args.strategy, args.k, balance=args.balance, mc_passes=args.mc_dropout,
                              seed=args.seed, oracle=args.oracle, batch_size=args.batch_size, out=args.out)
        print(f"{args.k} images written to {path}; fill in its label column, then train the next experiment "
              f"with --set data.label_file={path}")
    return 0


def _print_summary(results: list[dict]) -> None:
    columns = ["top1", "balanced_acc", "acc_many", "acc_medium", "acc_few", "pseudo_acc", "pseudo_mask_rate"]
    present = [c for c in columns if any(c in r for r in results)]
    if not present:  # every run paused before its first evaluation
        return
    width = max(len(r["run"]) for r in results)
    algorithm_width = max(len("algorithm"), *(len(r["algorithm"]) for r in results))
    print("\n" + f"{'run':<{width}}  {'algorithm':<{algorithm_width}}  " + "  ".join(f"{c:>12}" for c in present))
    for r in results:
        cells = "  ".join(f"{r[c]:>12.4f}" if c in r else f"{'-':>12}" for c in present)
        print(f"{r['run']:<{width}}  {r['algorithm']:<{algorithm_width}}  {cells}")


def _config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import yaml

    from debiaspl.config import describe_fields, load_experiment, protocol_deviations, protocol_table, to_dict

    if args.protocols:
        print(protocol_table(), end="")
        return 0
    if args.reference:
        from debiaspl.hooks import HOOKS

        def table(rows):
            print("| key | type | default | meaning |\n|---|---|---|---|")
            for key, type_name, default, doc in rows:
                print(f"| `{key}` | {type_name} | `{default!r}` | {doc} |")

        table(describe_fields())
        for name, hook in HOOKS.items():
            print(f"\nHook `{name}` (an entry `- name: {name}` of the `hooks:` list):\n")
            table(describe_fields(hook.Options, ""))
        return 0
    if args.experiment is None:
        parser.error("name an experiment file, or pass --reference or --protocols")
    config = load_experiment(args.experiment, args.overrides)
    print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
    for key, (ours, theirs) in protocol_deviations(config).items():
        print(f"# departs from protocol {config.protocol}: {key} = {theirs!r} (protocol: {ours!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
