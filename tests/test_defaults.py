"""The embedded default of `fedft run` is the shipped main-job config."""

from fedft.cli import default_config
from fedft.config import ExperimentConfig


def test_embedded_default_equals_the_shipped_toml():
    shipped = ExperimentConfig.from_toml("experiments/configs/sfprompt_mnist.toml")
    assert default_config([]) == shipped
    assert shipped.federation.strategy == "sfprompt" and shipped.partition.num_clients == 10
    assert shipped.model.name == "dinov2-small" and shipped.data.image_size == 112


def test_flower_app_config_declares_the_default():
    import tomllib
    from pathlib import Path

    from fedft.config import flatten
    from fedft.federated.apps import config_from_run_config

    doc = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    flat = flatten(doc)
    cfg, out = config_from_run_config(flat, Path("."))
    assert cfg == default_config([]) and out is None
    flat["federation.rounds"] = 2
    flat["config-file"] = "experiments/configs/mnist_linear_probe.toml"
    cfg, _ = config_from_run_config(flat, Path("."))
    assert cfg.federation.rounds == 2 and cfg.method.name == "linear_probe"  # file, then the changed key
