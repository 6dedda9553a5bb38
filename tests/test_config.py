"""Config parsing: TOML, --set overrides, Flower run_config, and one-line errors."""

from __future__ import annotations

import pytest

from fedft.config import ExperimentConfig, parse_overrides
from fedft.errors import ConfigError


def test_defaults_and_overrides_cast_types():
    cfg = ExperimentConfig.from_overrides(["train.lr=0.01", "train.epochs=3", "federation.sfprompt.keep-ratio=0.3",
                                           "output.plots=false", "seed=7"])
    assert cfg.train.lr == 0.01 and cfg.train.epochs == 3
    assert cfg.federation.options_for("sfprompt").keep_ratio == 0.3
    assert cfg.output.plots is False and cfg.seed == 7


def test_toml_then_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('seed = 3\n[train]\nlr = 0.5\nepochs = 2\n[federation.sfprompt]\nlocal_epochs = 0\n')
    cfg = ExperimentConfig.from_toml(p, ["train.lr=0.25"])
    assert (cfg.seed, cfg.train.lr, cfg.train.epochs, cfg.federation.options_for("sfprompt").local_epochs) == (3, 0.25, 2, 0)


def test_run_config_roundtrip():
    cfg = ExperimentConfig.from_overrides(["split.head_blocks=1", "data.name=digits"])
    flat = cfg.to_run_config()
    assert flat["split.head_blocks"] == 1
    kebab = {k.replace("_", "-"): str(v) for k, v in flat.items()}  # Flower delivers kebab keys, maybe strings
    assert ExperimentConfig.from_run_config(kebab) == cfg


@pytest.mark.parametrize(
    "override, needle",
    [
        ("bogus.key=1", "unknown config key 'bogus'"),
        ("train.lrr=0.1", "unknown config key 'train.lrr'; valid keys in [train]"),
        ("train.optimizer=rmsprop", "allowed: sgd, adam, adamw"),
        ("train.epochs=two", "bad value 'two' for train.epochs; expected int"),
        ("federation.sfprompt.keep_ratio=1.5", "federation.sfprompt.keep_ratio"),
        ("output.plots=maybe", "allowed: true, false"),
        ("train=3", "[train] must be a table"),
    ],
)
def test_bad_input_names_the_field(override, needle):
    with pytest.raises(ConfigError) as e:
        ExperimentConfig.from_overrides([override])
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        ExperimentConfig.from_toml(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        ExperimentConfig.from_toml(bad)


def test_override_syntax():
    assert parse_overrides(["a.b=1"]) == {"a": {"b": "1"}}
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["novalue"])


def test_options_tables_of_plugins_are_validated_and_moved_tables_named():
    with pytest.raises(ConfigError, match="unknown config key 'federation.sfprompt.keep'"):
        ExperimentConfig.from_overrides(["federation.sfprompt.keep=0.3"])
    with pytest.raises(ConfigError, match=r"\[method.sfprompt\] is now \[federation.sfprompt\]"):
        ExperimentConfig.from_overrides(["method.sfprompt.keep_ratio=0.3"])
    with pytest.raises(ConfigError, match="federation.fedprox.proximal_mu"):
        ExperimentConfig.from_overrides(["federation.aggregator=fedprox", "federation.fedprox.proximal_mu=-1"])


def test_a_strategy_reads_its_option_from_the_command_line_once():
    # The newcomer's walk: --set federation.sfprompt.keep_ratio reaches the strategy object, typed,
    # through the one parsed config (configure() replaces fields, never re-parses)
    from fedft.strategies import STRATEGIES

    cfg = ExperimentConfig.from_overrides(["federation.sfprompt.keep_ratio=0.3"])
    cls = STRATEGIES.get("sfprompt")
    assert cls(cls.configure(cfg)).options.keep_ratio == 0.3
    ablation = STRATEGIES.get("sfprompt_no_prune")
    assert ablation(ablation.configure(cfg)).options.keep_ratio == 1.0  # a variant fixes its option
