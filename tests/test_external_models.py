"""torchvision:NAME / timm:NAME networks behind the Classifier interface, and model.weights (a local
state_dict, ImageNet heads left out). Small torchvision networks on 8x8 inputs, a few seconds each."""

import csv
import hashlib
import json
import logging
import sys

import pytest
import torch
import yaml
from torch import nn
from torchvision import models

from conftest import run_cli as debiaspl
from debiaspl.analysis.evaluate_run import evaluate_run
from debiaspl.analysis.load_run import load_run
from debiaspl.config import ConfigError, from_dict, load_experiment, to_dict
from debiaspl.engine.run import run_folder, train_run, weights_record
from debiaspl.errors import UserError
from debiaspl.models import MODELS, Classifier, ExternalClassifier, build_model
from debiaspl.models.external import library_names
from debiaspl.run_folder import load_checkpoint

SMALL = "shufflenet_v2_x0_5"  # ~0.35M parameters: the cheapest torchvision network with a Linear head
NUM_CLASSES = 10


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def native(architecture: str = SMALL, num_classes: int = 1000) -> nn.Module:
    return models.get_model(architecture, weights=None, num_classes=num_classes).eval()


def saved(tmp_path, state, name="weights.pt"):
    path = tmp_path / name
    torch.save(state, path)
    return str(path)


# ---- the registry --------------------------------------------------------------------------------


def test_registry_takes_library_names_and_iterates_the_builtins():
    assert list(MODELS) == ["wrn28_2", "wrn28_8", "small_cnn", "small_cnn_gn"] and len(MODELS) == 4
    assert f"torchvision:{SMALL}" in MODELS and "torchvision:resnet50" in MODELS
    assert "torchvision:resnet5O" not in MODELS and "foo:bar" not in MODELS and "resnet50" not in MODELS
    assert isinstance(MODELS[f"torchvision:{SMALL}"](num_classes=3), ExternalClassifier)
    with pytest.raises(KeyError):
        MODELS["torchvision:nothing"]
    assert MODELS.describe().endswith("small_cnn_gn / torchvision:NAME / timm:NAME")


@pytest.mark.parametrize("name, message", [
    ("torchvision:resnet5O", r"torchvision has no architecture 'resnet5O'.*did you mean 'torchvision:resnet50'"),
    ("foo:bar", r"'foo' is not a model library: choose a built-in \(wrn28_2, .*torchvision:NAME.*timm:NAME"),
    ("resnet50", r"choose a built-in .*did you mean 'torchvision:resnet50'"),
])
def test_config_names_the_bad_model_and_the_closest_one(name, message):
    with pytest.raises(ConfigError, match=rf"model.name = '{name}': {message}"):
        from_dict({"model": {"name": name}})
    with pytest.raises(ValueError, match=rf"unknown model '{name}'"):
        build_model(name, NUM_CLASSES)


@pytest.fixture
def without_timm(monkeypatch):
    library_names.cache_clear()
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    yield
    library_names.cache_clear()


def test_timm_names_without_timm_say_how_to_install_it(without_timm):
    with pytest.raises(ConfigError, match=r"model.name = 'timm:resnet18': timm:resnet18 needs timm, which is not "
                                          r"installed: pip install timm"):
        from_dict({"model": {"name": "timm:resnet18"}})
    with pytest.raises(ConfigError, match="pip install timm"):
        from_dict({"model": {"name": "timm:x"}})


# ---- the Classifier interface --------------------------------------------------------------------


@pytest.mark.parametrize("architecture, in_channels", [(SMALL, 1), (SMALL, 3), ("mobilenet_v3_small", 1)])
def test_library_networks_are_classifiers(architecture, in_channels):
    model = build_model(f"torchvision:{architecture}", NUM_CLASSES, in_channels, dropout=0.3).eval()
    assert isinstance(model, Classifier)
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == NUM_CLASSES
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.3
    # the library's own dropout before its head (mobilenet's 0.2) gave way to model.dropout
    assert [m for m in model.modules() if isinstance(m, nn.Dropout)] == [model.dropout]
    x = torch.randn(2, in_channels, 8, 8)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, model.classifier.in_features)
        assert torch.equal(model(x), model.classifier(features))
    model.train()
    model(torch.randn(4, in_channels, 8, 8)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_without_dropout_the_wrapper_computes_the_library_network(tmp_path):
    # mobilenet_v3's head is Linear, Hardswish, Dropout, Linear: the features are the hidden layer's output
    reference = native("mobilenet_v3_small", NUM_CLASSES)
    model = build_model("torchvision:mobilenet_v3_small", NUM_CLASSES,
                        weights=saved(tmp_path, reference.state_dict())).eval()
    assert isinstance(model.dropout, nn.Identity)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-6)


def test_networks_without_a_linear_head_are_refused():
    with pytest.raises(UserError, match=r"'torchvision:squeezenet1_1': this network has no final nn.Linear"):
        build_model("torchvision:squeezenet1_1", NUM_CLASSES)


# ---- model.weights -------------------------------------------------------------------------------


def test_imagenet_weights_load_all_but_the_head_and_say_so(tmp_path, caplog):
    source = native()  # 1000 classes, 3 channels, as torchvision saves ImageNet weights
    path = saved(tmp_path, source.state_dict())
    with caplog.at_level(logging.WARNING, logger="debiaspl.models"):
        model = build_model(f"torchvision:{SMALL}", NUM_CLASSES, weights=path)
    assert [r.getMessage() for r in caplog.records] == [
        f"debiaspl: model.weights {path}: left out fc.weight, fc.bias (1000 classes in the file, 10 in this run); "
        f"the classifier starts from random weights"]
    loaded = model.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[f"body.{key}"], value), key
    assert model.classifier.weight.shape == (NUM_CLASSES, 1024)
    # the same class count: the head loads too, into `classifier`
    same = build_model(f"torchvision:{SMALL}", 1000, weights=path)
    assert torch.equal(same.classifier.weight, source.fc.weight) and torch.equal(same.classifier.bias, source.fc.bias)


def test_rgb_weights_start_a_grayscale_network(tmp_path, caplog):
    source = native()
    with caplog.at_level(logging.WARNING, logger="debiaspl.models"):
        model = build_model(f"torchvision:{SMALL}", NUM_CLASSES, in_channels=1,
                            weights=saved(tmp_path, source.state_dict()))
    assert "conv1.0.weight adapted from 3 input channels to 1" in caplog.text
    # summed over RGB: a gray image gives the first layer the response the RGB network gives it
    torch.testing.assert_close(model.body.conv1[0].weight, source.conv1[0].weight.sum(dim=1, keepdim=True))


@pytest.mark.parametrize("wrap", [lambda s: s, lambda s: {"state_dict": s, "epoch": 3}, lambda s: {"model": s}])
def test_weights_in_a_plain_or_wrapped_state_dict(tmp_path, wrap):
    source = native(num_classes=NUM_CLASSES)
    model = build_model(f"torchvision:{SMALL}", NUM_CLASSES, weights=saved(tmp_path, wrap(source.state_dict())))
    assert torch.equal(model.classifier.weight, source.fc.weight)
    # and a debiaspl model's own state_dict (a run's checkpoint "model" entry) loads as it is
    again = build_model(f"torchvision:{SMALL}", NUM_CLASSES, weights=saved(tmp_path, {"model": model.state_dict()}))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_builtin_models_take_weights_too(tmp_path, caplog):
    source = build_model("small_cnn", NUM_CLASSES)
    with caplog.at_level(logging.WARNING, logger="debiaspl.models"):
        model = build_model("small_cnn", 4, weights=saved(tmp_path, source.state_dict()))
    assert "left out classifier.weight, classifier.bias (10 classes in the file, 4 in this run)" in caplog.text
    assert torch.equal(model.blocks[2][0].weight, source.blocks[2][0].weight)


def test_bad_weights_files_are_refused_with_their_names(tmp_path):
    name = f"torchvision:{SMALL}"
    missing = str(tmp_path / "absent.pt")
    with pytest.raises(UserError, match=rf"model.weights = '{missing}': no such file"):
        build_model(name, NUM_CLASSES, weights=missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=rf"'{garbage}': cannot read it as a PyTorch state_dict"):
        build_model(name, NUM_CLASSES, weights=str(garbage))
    code = saved(tmp_path, {"fc.weight": nn.Linear(2, 2)}, "module.pt")  # weights_only refuses to unpickle this
    with pytest.raises(UserError, match=rf"'{code}': cannot read it as a PyTorch state_dict"):
        build_model(name, NUM_CLASSES, weights=code)
    for entries in ({"lr": 0.1}, {}):
        path = saved(tmp_path, entries, "not_state.pt")
        with pytest.raises(UserError, match=rf"'{path}': not a state_dict"):
            build_model(name, NUM_CLASSES, weights=path)
    other = saved(tmp_path, native("mobilenet_v3_small").state_dict(), "mobilenet.pt")
    with pytest.raises(UserError, match=rf"'{other}' does not fit {name}: missing keys conv1.0.weight, .* and \d+ more; "
                                        r"unexpected keys features.0.0.weight"):
        build_model(name, NUM_CLASSES, weights=other)
    state = native().state_dict()
    state["fc.weight"] = state["fc.weight"][:, :512]  # another feature width: not just another class count
    misshapen = saved(tmp_path, state, "misshapen.pt")
    with pytest.raises(UserError, match=r"misshapen keys fc.weight \(\[1000, 512\] in the file, \[10, 1024\]"):
        build_model(name, NUM_CLASSES, weights=misshapen)
    del state["fc.weight"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(UserError, match=r"missing keys fc.weight; unexpected keys extra.weight"):
        build_model(name, 1000, weights=saved(tmp_path, state, "partial.pt"))


def test_plain_dict_files_and_auxiliary_heads_load(tmp_path, caplog):
    # a dict without torch's _metadata (many scripts save one): mnasnet reads its module version from it
    plain = {key: value for key, value in native("mnasnet0_5").state_dict().items()}
    build_model("torchvision:mnasnet0_5", NUM_CLASSES, weights=saved(tmp_path, plain, "plain.pt"))
    # torchvision's ImageNet googlenet keeps its training-only heads, which debiaspl builds without
    with_aux = models.GoogLeNet(num_classes=1000, aux_logits=True, init_weights=False).state_dict()
    with caplog.at_level(logging.WARNING, logger="debiaspl.models"):
        model = build_model("torchvision:googlenet", NUM_CLASSES, weights=saved(tmp_path, with_aux, "aux.pt"))
    assert "left out 20 keys of the auxiliary heads (aux1.conv.conv.weight, ...)" in caplog.text
    assert torch.equal(model.body.conv1.conv.weight, with_aux["conv1.conv.weight"])


def test_a_network_that_cannot_take_the_image_size_is_one_line_and_leaves_no_folder(tiny, tmp_path):
    config = tiny(model={"name": "torchvision:alexnet"}, logging={"run_name": "too_small"})  # 8 x 8 digits
    path = tmp_path / "alexnet.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    proc = debiaspl("train", path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "model.name = 'torchvision:alexnet' does not take the data's 1 x 8 x 8 images" in proc.stderr
    assert "set data.image_size" in proc.stderr and not run_folder(config).exists()


def test_a_missing_weights_file_of_a_later_run_stops_before_the_first_trains(tiny, tmp_path):
    first = tiny(logging={"run_name": "first"})
    second = tiny(model={"weights": str(tmp_path / "absent.pt")}, logging={"run_name": "second"})
    paths = []
    for config in (first, second):
        paths.append(tmp_path / f"{config.logging.run_name}.yaml")
        paths[-1].write_text(yaml.safe_dump(to_dict(config)))
    proc = debiaspl("train", *paths)
    assert proc.returncode == 2 and f"model.weights = '{tmp_path / 'absent.pt'}': no such file" in proc.stderr
    assert not run_folder(first).exists()


# ---- timm, when installed ------------------------------------------------------------------------


def test_timm_networks_and_their_weights(tmp_path):
    timm = pytest.importorskip("timm")
    source = timm.create_model("resnet18", pretrained=False)  # 1000 classes, 3 channels
    path = saved(tmp_path, source.state_dict())
    model = build_model("timm:resnet18", NUM_CLASSES, in_channels=1, dropout=0.2, weights=path).eval()
    assert isinstance(model, Classifier) and model.classifier.in_features == source.num_features
    assert torch.equal(model.body.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), model.classifier(model.forward_features(x)))
    same = build_model("timm:resnet18", 1000, weights=path).eval()  # the head loads too: the same network
    rgb = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(same(rgb), source.eval()(rgb), rtol=0, atol=1e-5)


# ---- a run from YAML: train, then eval and influence without the weights file ------------------


def test_a_run_from_imagenet_weights_trains_evaluates_and_traces(tiny, tmp_path, caplog):
    weights = tmp_path / "imagenet.pt"
    torch.save(native().state_dict(), weights)
    config = tiny(model={"name": f"torchvision:{SMALL}", "weights": str(weights)},
                  train={"steps": 2}, eval={"interval": 2},  # precision auto: bf16 where it is fast
                  logging={"checkpoint_interval": 2, "snapshot_interval": 1, "run_name": "external"})
    path = tmp_path / "external.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    with caplog.at_level(logging.WARNING, logger="debiaspl.models"):
        train_run(load_experiment(path))
    assert "left out fc.weight, fc.bias (1000 classes in the file, 10 in this run)" in caplog.text
    assert "conv1.0.weight adapted from 3 input channels to 1" in caplog.text
    run_dir = run_folder(config)
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["fp32_depthwise_convs"] > 0  # shufflenet has them
    assert info["model_weights"] == {"path": str(weights.resolve()), "bytes": weights.stat().st_size,
                                     "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    # a resume keeps the record of the start, whether or not the file is still there
    assert weights_record(config, {"step": 2}, run_dir) == info["model_weights"]
    weights.unlink()  # the run folder holds everything the offline verbs need
    run = load_run(run_dir, device="cpu")
    # the checkpoint's EMA weights, not the file's, are what the verbs evaluate
    assert torch.equal(run.model.classifier.weight, load_checkpoint(run_dir / "checkpoint.pt")["ema"]["classifier.weight"])
    assert 0 <= evaluate_run(run)["top1"] <= 1 and (run_dir / "eval/metrics.json").is_file()
    traced = debiaspl("influence", run_dir, "--device", "cpu", "--top", 3)
    assert traced.returncode == 0, traced.stderr
    with open(run_dir / "influence/self_influence_labeled.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 96 and float(rows[0]["last_layer"]) > 0


def test_a_timm_tag_the_architecture_lacks_is_refused_at_load():
    pytest.importorskip("timm")
    assert "timm:resnet18.a1_in1k" in MODELS and "timm:resnet18.bogus_tag" not in MODELS
    with pytest.raises(ConfigError, match=r"timm's resnet18 has no tag 'bogus_tag': its tags are .*a1_in1k"):
        from_dict({"model": {"name": "timm:resnet18.bogus_tag"}})
