"""One source of defaults: the shipped main-job config, and Flower's declared run config from it."""

from pathlib import Path

from fedft.cli import default_config
from fedft.config import ExperimentConfig, main_job_path


def test_embedded_default_is_the_shipped_toml():
    shipped = ExperimentConfig.from_toml("experiments/configs/sfprompt_mnist.toml")
    assert Path("experiments/configs/sfprompt_mnist.toml").resolve() == main_job_path()
    assert default_config([]) == shipped
    assert shipped.federation.strategy == "sfprompt" and shipped.partition.num_clients == 10
    assert shipped.model.name == "dinov2-small" and shipped.data.image_size == 112


def test_flower_app_config_is_generated_from_the_dataclasses():
    import tomllib

    from fedft.config import flatten
    from fedft.flower_config import app_config, render

    text = Path("pyproject.toml").read_text()
    assert render() in text, "pyproject.toml is stale: run `python -m fedft.flower_config`"
    declared = flatten(tomllib.loads(text)["tool"]["flwr"]["app"]["config"])
    assert declared == app_config()
    # every field of every section, and every plugin's options table, is declared
    cfg = ExperimentConfig.from_overrides(["method.name=lora", "federation.aggregator=fedadam"])
    for key in flatten(cfg.to_dict()):
        assert key.replace("_", "-") in declared, key


def test_flower_run_config_parses_to_the_main_job_and_takes_overrides():
    import tomllib

    from fedft.config import flatten
    from fedft.federated.apps import config_from_run_config

    flat = flatten(tomllib.loads(Path("pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    cfg, out = config_from_run_config(flat, Path("."))
    assert cfg == default_config([]) and out is None
    flat["federation.rounds"] = 2
    flat["federation.sfprompt.keep-ratio"] = 0.3
    cfg, _ = config_from_run_config(flat, Path("."))
    assert cfg.federation.rounds == 2 and cfg.federation.options_for("sfprompt").keep_ratio == 0.3
    flat["config-file"] = "experiments/configs/mnist_linear_probe.toml"
    cfg, _ = config_from_run_config(flat, Path("."))
    assert cfg.federation.rounds == 2 and cfg.method.name == "linear_probe"  # file, then the changed keys
