"""The `debiaspl` command: train experiments, show resolved configs and the config reference.

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
                       help="override a config value, e.g. --set train.steps=1000 (repeatable)")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR",
                       help="continue the run in RUN_DIR with the config saved there")
    train.add_argument("--until-step", type=int, metavar="STEP",
                       help="pause after this step (checkpointed); the same command continues later")

    show = verbs.add_parser("config", help="print the resolved config of an experiment, or the reference")
    show.add_argument("experiment", nargs="?", type=Path)
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    show.add_argument("--reference", action="store_true", help="print every key with its default and meaning")

    args = parser.parse_args(argv)
    try:
        if args.verb == "train":
            return _train(args, parser)
        return _config(args, parser)
    except UserError as exc:
        print(f"debiaspl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("debiaspl: interrupted; the last checkpoint is kept, run the same command to resume", file=sys.stderr)
        return 130


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from debiaspl.config import load_experiment
    from debiaspl.engine.run import preflight, train_run
    from debiaspl.run_folder import CONFIG_NAME, require_run_folder

    if args.resume is not None:
        if args.experiments:
            parser.error("give either experiment files or --resume RUN_DIR, not both")
        args.resume = require_run_folder(args.resume)  # resolved: `--resume .` names the folder by its real name
        saved = args.resume / CONFIG_NAME
        # The saved config names its own run folder; point it at the one given here.
        overrides = [f"logging.run_dir={args.resume.parent}", f"logging.run_name={args.resume.name}", *args.overrides]
        configs = [load_experiment(saved, overrides)]
    elif args.experiments:
        configs = [load_experiment(path, args.overrides) for path in args.experiments]
    else:
        parser.error("name at least one experiment file, or --resume RUN_DIR")
    if args.until_step is not None and args.until_step < 1:
        parser.error("--until-step must be a positive step number")
    names = [c.logging.run_name for c in configs]
    if len(set(names)) != len(names):
        raise UserError(f"two experiments would write to the same run folder ({', '.join(names)}); "
                        f"give them different file names or logging.run_name")
    for config in configs:  # a mistake in the last experiment should not wait for the first to train
        preflight(config)
    results = [train_run(config, args.until_step) for config in configs]
    _print_summary(results)
    return 0


def _print_summary(results: list[dict]) -> None:
    columns = ["top1", "balanced_acc", "acc_many", "acc_medium", "acc_few", "pseudo_acc", "pseudo_mask_rate"]
    present = [c for c in columns if any(c in r for r in results)]
    if not present:  # every run paused before its first evaluation
        return
    width = max(len(r["run"]) for r in results)
    print("\n" + f"{'run':<{width}}  {'algorithm':<9}  " + "  ".join(f"{c:>12}" for c in present))
    for r in results:
        cells = "  ".join(f"{r[c]:>12.4f}" if c in r else f"{'-':>12}" for c in present)
        print(f"{r['run']:<{width}}  {r['algorithm']:<9}  {cells}")


def _config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import yaml

    from debiaspl.config import describe_fields, load_experiment, to_dict

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
        parser.error("name an experiment file, or pass --reference")
    print(yaml.safe_dump(to_dict(load_experiment(args.experiment, args.overrides)), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
