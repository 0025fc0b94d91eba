"""The offline verbs over a trained run folder: eval, influence, select, and data.label_file."""

import csv
import json
import subprocess
import sys

import pytest
import torch

from conftest import run_cli as debiaspl
from debiaspl.analysis.influence_run import self_influence
from debiaspl.analysis.load_run import load_run
from debiaspl.config import DataConfig
from debiaspl.data.prepare import prepare_data
from debiaspl.engine.run import run_folder, train_run
from debiaspl.errors import UserError

DIGITS = {"dataset": "digits", "num_labeled_head": 20, "labeled_imbalance": 5, "num_unlabeled_head": 40,
          "unlabeled_imbalance": 5}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run with dropout, snapshots and the cartography hook, shared by the tests below."""
    from conftest import tiny_config
    from debiaspl.config import from_dict, to_dict
    base = tiny_config(tmp_path_factory.mktemp("runs"), model={"name": "small_cnn", "dropout": 0.3},
                       train={"steps": 26}, logging={"snapshot_interval": 13, "run_name": "trained"})
    # 26 steps: two complete epochs of the unlabeled set (199 images, 16 a step) for the cartography map
    config = from_dict({**to_dict(base), "hooks": [{"name": "cartography", "figure_interval": 26}]})
    train_run(config)
    return run_folder(config)




def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_eval_writes_metrics_uncertainty_and_ood(trained):
    proc = debiaspl("eval", trained, "--mc-dropout", 3, "--ood-classes", "8,9", "--ood", "digits")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((trained / "eval/metrics.json").read_text())
    for key in ("top1", "balanced_acc", "acc_few", "nll", "brier", "ece", "class_acc"):
        assert key in metrics, key
    assert metrics["mc_dropout"]["passes"] == 3 and metrics["mc_dropout"]["mean_mutual_information"] > 0
    ood = metrics["ood"]
    assert set(ood) == {"classes_8_9", "digits"}
    for score in ("msp", "max_logit", "energy", "entropy", "mutual_information"):
        assert 0 <= ood["classes_8_9"][score]["auroc"] <= 1
        assert 0 <= ood["classes_8_9"][score]["fpr_at_95_tpr"] <= 1
    rows = read_csv(trained / "eval/predictions.csv")
    assert len(rows) == 539 and {"sample_id", "confidence", "mutual_information", "variance"} <= set(rows[0])
    assert (trained / "eval/reliability.png").is_file() and (trained / "eval/ood_classes_8_9.png").is_file()


def test_ood_from_a_plain_folder_of_grayscale_images(trained, tmp_path):
    from PIL import Image
    folder = tmp_path / "noise"
    folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    for i in range(20):
        pixels = torch.randint(0, 256, (8, 8), dtype=torch.uint8, generator=generator).numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
    proc = debiaspl("eval", trained, "--ood", f"imagefolder:{folder}")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((trained / "eval/metrics.json").read_text())["ood"]["noise"]
    assert report["num_out"] == 20 and 0 <= report["energy"]["auroc"] <= 1


def test_influence_last_layer_equals_full_gradient_of_the_classifier(trained):
    run = load_run(trained, device="cpu")
    result = self_influence(run, layers=("classifier",))
    # the full per-sample gradient of the last layer (weight and bias) is what the closed form computes
    assert torch.allclose(result["full_gradient"], result["last_layer"], rtol=1e-4)
    assert (result["last_layer"] > 0).all()
    rows = read_csv(trained / "influence/self_influence_labeled.csv")
    assert len(rows) == len(run.data.labeled.labels)
    assert float(rows[0]["last_layer"]) >= float(rows[-1]["last_layer"])
    proc = debiaspl("influence", trained, "--layers", "blocks.2", "--top", 3)
    assert proc.returncode == 0, proc.stderr
    assert "full_gradient" in read_csv(trained / "influence/self_influence_labeled.csv")[0]
    bad = debiaspl("influence", trained, "--layers", "nothing_here")
    assert bad.returncode == 2 and "matches no parameter" in bad.stderr


@pytest.mark.parametrize("strategy", ["least_confidence", "margin", "entropy", "bald", "random", "ambiguity",
                                      "self_influence"])
def test_select_every_strategy(trained, strategy):
    from debiaspl.analysis.select_run import select_samples
    out = trained / "selection" / f"test_{strategy}.csv"
    select_samples(load_run(trained, device="cpu"), strategy, 7, oracle=True, mc_passes=3, out=out)
    rows = read_csv(out)
    run_info = json.loads((trained / "run_info.json").read_text())
    assert len(rows) == 7 and len({row["sample_id"] for row in rows}) == 7
    assert all(row["label"] in run_info["class_names"] for row in rows)
    if strategy not in ("random",):
        scores = [float(row["score"]) for row in rows]
        assert scores == sorted(scores, reverse=True)


def test_balanced_selection_spreads_over_classes(trained):
    from debiaspl.inference import predict_logits
    from debiaspl.metrics.selection import class_quotas, inverse_marginal_weights
    out = trained / "selection" / "balanced.csv"
    assert debiaspl("select", trained, "--strategy", "entropy", "--k", 20, "--balance", "--out", out).returncode == 0
    rows = read_csv(out)
    assert len(rows) == 20 and all(row["label"] == "" for row in rows)
    run = load_run(trained, device="cpu")
    from debiaspl.algorithm import debias_logits
    logits = predict_logits(run.model, run.data.unlabeled.images, run.mean, run.std, 256, run.device)
    pool_sizes = torch.bincount(debias_logits(logits, run.class_marginal, run.config.algorithm.layer.tau).argmax(1),
                                minlength=10)
    quotas = class_quotas(pool_sizes, inverse_marginal_weights(run.class_marginal), 20)
    counts = [sum(row["predicted"] == name for row in rows) for name in run.data.class_names]
    assert counts == [int(q) for q in quotas]


def test_mc_dropout_samples_dropout_only_and_leaves_the_rng_alone(trained):
    from debiaspl.analysis.evaluate_run import mc_dropout_scores
    from debiaspl.inference import predict_logits
    run = load_run(trained, device="cpu")
    images = run.data.test.images[:64]
    plain = predict_logits(run.model, images, run.mean, run.std, 32, run.device)
    modes = []
    handles = [m.register_forward_pre_hook(lambda module, _: modes.append((type(module).__name__, module.training)))
               for m in run.model.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.Dropout))]
    rng = torch.get_rng_state()
    scores = mc_dropout_scores(run, images, 4, 32, seed=0)
    for handle in handles:
        handle.remove()
    assert torch.equal(torch.get_rng_state(), rng)
    assert {mode for name, mode in modes if name == "BatchNorm2d"} == {False}
    assert {mode for name, mode in modes if name == "Dropout"} == {True}
    assert (scores["mutual_information"] > 0).any()
    assert torch.equal(predict_logits(run.model, images, run.mean, run.std, 32, run.device), plain)


def test_unlabeled_self_influence_uses_the_debiased_pseudo_label(trained):
    from debiaspl.inference import predict_logits
    from debiaspl.metrics.influence import last_layer_self_influence
    from debiaspl.analysis.load_run import load_snapshot
    from debiaspl.run_folder import list_snapshots
    run = load_run(trained, device="cpu")
    assert run.config.algorithm.name == "fixmatch+debiaspl" and run.config.algorithm.layer.tau == 0.4
    result = self_influence(run, split="unlabeled", write=False)
    expected = torch.zeros(len(run.data.unlabeled.labels), dtype=torch.float64)
    for path in list_snapshots(trained):
        snapshot = load_snapshot(path)
        run.load_weights(snapshot["model"])
        logits, features = predict_logits(run.model, run.data.unlabeled.images, run.mean, run.std, 256, run.device,
                                          with_features=True)
        log_q = snapshot["algorithm"]["class_marginal"].log()
        labels = (logits - 0.4 * log_q).argmax(1)
        expected += last_layer_self_influence(torch.softmax(logits + 0.4 * log_q, 1), labels, features, snapshot["lr"])
    assert torch.allclose(result["last_layer"], expected)


def test_influence_restores_the_runs_weights(trained):
    from debiaspl.inference import predict_logits
    run = load_run(trained, device="cpu")
    before = predict_logits(run.model, run.data.test.images[:32], run.mean, run.std, 32, run.device)
    self_influence(run, write=False)
    assert torch.equal(predict_logits(run.model, run.data.test.images[:32], run.mean, run.std, 32, run.device), before)


def test_selection_goes_back_into_the_next_experiment(trained, tmp_path):
    out = tmp_path / "picked.csv"
    assert debiaspl("select", trained, "--strategy", "least_confidence", "--k", 5, "--oracle", "--out", out).returncode == 0
    picked = {row["sample_id"]: row["label"] for row in read_csv(out)}
    before = prepare_data(DataConfig(**DIGITS))
    after = prepare_data(DataConfig(**DIGITS, label_file=str(out)))
    assert len(after.labeled.labels) == len(before.labeled.labels) + 5
    assert len(after.unlabeled.labels) == len(before.unlabeled.labels) - 5
    assert set(picked) <= set(after.labeled.sample_ids) and not set(picked) & set(after.unlabeled.sample_ids)
    for sample_id, label in picked.items():
        assert after.class_names[int(after.labeled.labels[after.labeled.sample_ids.index(sample_id)])] == label
    assert sum(after.labeled_counts) == len(after.labeled.labels)


def test_label_file_flips_a_labeled_sample_and_reports_mistakes(tmp_path):
    data = prepare_data(DataConfig(**DIGITS))
    victim = data.labeled.sample_ids[0]
    path = tmp_path / "flips.csv"
    path.write_text(f"sample_id,label\n{victim},7\n")
    flipped = prepare_data(DataConfig(**DIGITS, label_file=str(path)))
    assert int(flipped.labeled.labels[flipped.labeled.sample_ids.index(victim)]) == 7
    assert len(flipped.labeled.labels) == len(data.labeled.labels)
    for text, message in (("sample_id,label\nnope/1,3\n", "not in the train set, e.g. 'nope/1'"),
                          (f"sample_id,label\n{victim},\n", "line 2: sample .* has no label"),
                          (f"sample_id,label\n{victim},cat\n", "label 'cat' is neither a class name nor an index"),
                          ("id,class\nx,1\n", "needs a header with columns sample_id and label")):
        path.write_text(text)
        with pytest.raises(UserError, match=message):
            prepare_data(DataConfig(**DIGITS, label_file=str(path)))
    with pytest.raises(UserError, match="cannot read it"):
        prepare_data(DataConfig(**DIGITS, label_file=str(tmp_path / "missing.csv")))
    path.write_text(f"sample_id,label\n{victim},7\n{victim},3\n")
    with pytest.raises(UserError, match="listed on lines 2 and 3"):
        prepare_data(DataConfig(**DIGITS, label_file=str(path)))
    # a spreadsheet's byte-order mark and padded cells are fine
    path.write_bytes(f"\ufeffsample_id,label\n {victim} , 7 \n".encode("utf-8"))
    flipped = prepare_data(DataConfig(**DIGITS, label_file=str(path)))
    assert int(flipped.labeled.labels[flipped.labeled.sample_ids.index(victim)]) == 7


def test_a_run_keeps_the_label_file_it_trained_on(tmp_path):
    from conftest import tiny_config
    data = prepare_data(DataConfig(**DIGITS))
    path = tmp_path / "labels.csv"
    path.write_text(f"sample_id,label\n{data.unlabeled.sample_ids[0]},3\n")
    config = tiny_config(tmp_path / "runs", train={"steps": 2}, data={"label_file": str(path)})
    train_run(config)
    path.write_text(f"sample_id,label\n{data.unlabeled.sample_ids[0]},3\n{data.unlabeled.sample_ids[1]},4\n")
    run = load_run(run_folder(config), device="cpu")  # rebuilt from the run folder's copy, not the edited file
    assert len(run.data.labeled.labels) == len(data.labeled.labels) + 1


def test_offline_mistakes_are_one_line_errors(trained, tmp_path):
    from conftest import tiny_config
    plain = tiny_config(tmp_path / "runs", train={"steps": 2}, logging={"run_name": "plain"})
    train_run(plain)
    folder = run_folder(plain)
    cases = [(("select", folder, "--strategy", "bald", "--k", 3), "needs MC Dropout"),
             (("select", folder, "--strategy", "ambiguity", "--k", 3), "train with the cartography hook"),
             (("influence", folder), "has no snapshots/"),
             (("eval", folder, "--mc-dropout", 2), "needs a model trained with dropout"),
             (("eval", folder, "--ood", "svhn:/x"), "expected imagefolder:PATH"),
             (("eval", folder, "--ood-classes", "cat"), "is not a class of this run"),
             (("select", folder, "--strategy", "margin", "--k", 100000), "must be between 1 and the unlabeled pool's"),
             (("eval", folder, "--ood-classes", ",".join(map(str, range(10)))), "names every class"),
             (("eval", folder, "--batch-size", 0), "must be at least 1"),
             (("eval", trained, "--mc-dropout", 1), "needs at least 2 passes"),
             (("eval", tmp_path), "is not a run folder")]
    for index, (args, message) in enumerate(cases):
        if index == 0:  # one through the real entry point: its exit status, and nothing else on stderr
            proc = subprocess.run([sys.executable, "-m", "debiaspl", *map(str, args)], capture_output=True, text=True)
        else:
            proc = debiaspl(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)


def test_galleries_of_the_offline_rankings(trained):
    from debiaspl.analysis.evaluate_run import evaluate_run
    from debiaspl.analysis.select_run import select_samples

    run = load_run(trained)
    names = run.data.class_names
    evaluate_run(run, mc_passes=3, ood_classes=("8", "9"))
    predictions = read_csv(trained / "eval/predictions.csv")
    gallery = read_csv(trained / "eval/uncertain_gallery.csv")
    by_entropy = sorted(predictions, key=lambda row: -float(row["normalized_entropy"]))[:10]
    shown = [row for row in gallery if row["row"] == "highest normalized entropy"]
    assert [row["sample_id"] for row in shown] == [row["sample_id"] for row in by_entropy]
    assert [(row["label"], row["pseudo_label"]) for row in shown] == \
        [(names[int(row["label"])], names[int(row["prediction"])]) for row in by_entropy]
    assert len([row for row in gallery if row["row"] == "highest BALD (mutual information)"]) == 10
    ood = read_csv(trained / "eval/ood_classes_8_9_gallery.csv")
    assert {row["row"] for row in ood} == {f"{score}: {what}" for score in ("msp", "max_logit", "energy", "entropy",
                                                                          "mutual_information")
                                         for what in ("OOD images scored most in-distribution", "test images scored most OOD")}
    for image in ("eval/uncertain_gallery.png", "eval/ood_classes_8_9_gallery.png", "eval/uncertainty.png"):
        assert (trained / image).stat().st_size > 10_000
    view = json.loads((trained / "eval/metrics.json").read_text())["uncertainty"]
    assert view["low"]["count"] + view["high"]["count"] == len(predictions)
    assert set(view["accuracy_kept"]) == {"normalized entropy", "BALD (mutual information)"}
    assert view["accuracy_kept"]["normalized entropy"][0] == pytest.approx(
        sum(row["label"] == row["prediction"] for row in predictions) / len(predictions))
    assert set(view["mean_normalized_entropy"]) == {"test, in-distribution classes", "test + Gaussian noise, std 0.2",
                                                    "OOD: classes_8_9"}

    self_influence(run, split="unlabeled")
    ranking = read_csv(trained / "influence/self_influence_unlabeled.csv")
    gallery = read_csv(trained / "influence/self_influence_unlabeled_gallery.csv")
    assert [(row["sample_id"], row["pseudo_label"]) for row in gallery] == \
        [(row["sample_id"], row["pseudo_label"]) for row in ranking[:16]]
    assert all(row["label"] in names for row in gallery)  # the hidden truth, beside the pseudo-label

    path = select_samples(run, "margin", 12, oracle=True)
    picks, gallery = read_csv(path), read_csv(path.with_name(path.stem + "_gallery.csv"))
    assert [(row["sample_id"], row["pseudo_label"], row["label"]) for row in gallery] == \
        [(row["sample_id"], row["predicted"], row["label"]) for row in picks]
    assert [row["row"] for row in gallery] == ["picks 1-10"] * 10 + ["picks 11-12"] * 2


def _brute_force_influence(run, test_index, training_images, training_labels, names_prefix, loss_logits_of,
                           training_weights=None):
    """sum over snapshots of lr * w * <grad CE(train), grad CE(test)> with plain autograd in float64, one
    sample at a time (w: the sample's weight in the training loss, 1 when not given)."""
    import copy

    from debiaspl.analysis.load_run import load_snapshot
    from debiaspl.data.loaders import to_model_input
    from debiaspl.run_folder import list_snapshots

    test = run.data.test
    total = torch.zeros(len(training_images), dtype=torch.float64)
    for path in list_snapshots(run.run_dir):
        snapshot = load_snapshot(path)
        model = copy.deepcopy(run.model).double().eval()
        model.load_state_dict({key: value.double() if value.is_floating_point() else value
                               for key, value in snapshot["model"].items()})
        params = [p for name, p in model.named_parameters() if name.startswith(names_prefix)]

        def gradient(image, label, adjust):
            x = to_model_input(image[None].to(run.device), run.mean, run.std).double()
            loss = torch.nn.functional.cross_entropy(adjust(model(x)), label[None])
            return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])

        test_gradient = gradient(test.images[test_index], test.labels[test_index], lambda z: z)
        adjust = loss_logits_of(snapshot["algorithm"])
        labels = training_labels(snapshot)
        weights = torch.ones(len(labels), dtype=torch.float64) if training_weights is None else training_weights(snapshot)
        for i in range(len(labels)):
            total[i] += snapshot["lr"] * weights[i] * (gradient(training_images[i], labels[i], adjust) @ test_gradient)
    return total


def test_proponent_scores_equal_brute_force_autograd_and_the_forms_agree(trained):
    from debiaspl.analysis.influence_run import influence_on_test_images
    from debiaspl.inference import predict_logits

    run = load_run(trained)
    last = influence_on_test_images(run, [5, 11], split="both")
    full = influence_on_test_images(run, [5, 11], split="both", layers=("classifier",))
    for name in ("labeled", "unlabeled"):  # the closed form is the full gradient restricted to the last layer
        torch.testing.assert_close(last[name], full[name], rtol=1e-4, atol=1e-9)
    labeled = run.data.labeled
    brute = _brute_force_influence(run, 5, labeled.images[:12], lambda snapshot: labeled.labels[:12], "classifier",
                                   lambda state: (lambda z: z))
    torch.testing.assert_close(last["labeled"][:12, 0], brute, rtol=1e-4, atol=1e-9)
    unlabeled = run.data.unlabeled

    def pseudo(snapshot):
        run.load_weights(snapshot["model"])
        logits = predict_logits(run.model, unlabeled.images[:12], run.mean, run.std, 64, run.device)
        return run.algorithm.pseudo_labels(logits, snapshot["algorithm"])

    weight = run.config.algorithm.unlabeled_weight / run.config.train.unlabeled_ratio  # lambda_u / mu, times the mask
    brute = _brute_force_influence(run, 11, unlabeled.images[:12], lambda snapshot: pseudo(snapshot).labels, "classifier",
                                   lambda state: (lambda z: run.algorithm.loss_logits(z, state)),
                                   lambda snapshot: pseudo(snapshot).mask.double() * weight)
    assert (brute == 0).any() and (brute != 0).any()  # some of these 12 were masked out at a snapshot, some not
    torch.testing.assert_close(last["unlabeled"][:12, 1], brute, rtol=1e-4, atol=1e-9)
    run.load_weights(load_run(trained).model.state_dict())
    # the full form over a convolution too, against autograd over the same parameters
    deep = influence_on_test_images(run, [5], split="labeled", layers=("blocks.2.0", "classifier"))
    brute = _brute_force_influence(run, 5, labeled.images[:6], lambda snapshot: labeled.labels[:6], ("blocks.2.0", "classifier"),
                                   lambda state: (lambda z: z))
    torch.testing.assert_close(deep["labeled"][:6, 0], brute, rtol=1e-4, atol=1e-9)


def test_proponents_cli_and_clusters_write_csvs_and_galleries(trained):
    proc = debiaspl("influence", trained, "--test", "2,7", "--k", "3")
    assert proc.returncode == 0, proc.stderr
    rows = read_csv(trained / "influence/proponents/test_2.csv")
    assert [row["kind"] for row in rows] == ["proponent"] * 3 + ["opponent"] * 3 + ["neighbour"] * 3
    scores = [float(row["score"]) for row in rows]
    assert scores[:3] == sorted(scores[:3], reverse=True) and scores[3:6] == sorted(scores[3:6])
    assert {row["set"] for row in rows} <= {"labeled", "unlabeled"}
    gallery = read_csv(trained / "influence/proponents/test_2_gallery.csv")
    assert [row["row"] for row in gallery][:1] == ["test image 2"] and len(gallery) == 10
    proc = debiaspl("influence", trained, "--cluster", "0", "--clusters", "2")
    assert proc.returncode == 0, proc.stderr
    clusters = read_csv(trained / "influence/clusters_0.csv")
    assert {row["cluster"] for row in clusters} == {"0", "1"}
    assert all(row["label"] == "0" for row in clusters if row["set"] == "labeled")
    for args, message in (((trained, "--test", "99999"), "test indices must lie in"),
                          ((trained, "--cluster", "giraffe"), "not a class of this run"),
                          ((trained, "--test", "1", "--cluster", "0"), "give one of them")):
        proc = debiaspl("influence", *args)
        assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
