"""Contract of every registered method on tiny random ViT and BERT models.

For each name in ``METHODS.names()``: after ``apply`` and one optimizer step only the declared
tensors (``update_keys``) change; the encoded update survives the wire codec and
``decode_update`` restores the travelling tensors in a fresh model; ``finalize`` keeps the
outputs when the method says so (``finalize_keeps_outputs``). The three contracts also hold with
bf16 compute (``train.precision=bf16``); ``finalize`` then keeps the outputs to bf16 rounding. Each method's options table
(``[method.<name>]``, declared in its module) is reachable and validated through the config.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedft.body.codec import decode_many, encode_many, frame_nbytes
from fedft.config import ExperimentConfig, MethodConfig
from fedft.errors import ConfigError
from fedft.methods import METHODS
from fedft.model import set_precision
from fedft.model.tiny import tiny_batch, tiny_task_model

pytestmark = pytest.mark.usefixtures("_one_thread")

ARCHS = ("vit", "bert")
PRECISIONS = ("fp32", "bf16")
FINALIZE_TOL = {"fp32": 1e-5, "bf16": 3e-2}  # bf16: a merged weight rounds differently from its parts


def build(name: str, arch: str, precision: str = "fp32"):
    """A 2-layer tiny model with ``name`` applied, in train mode, and its method."""
    method = METHODS.get(name)(MethodConfig(name=name, prompt_len=2))
    model = tiny_task_model(arch, prompt_len=method.prompt_tokens(), deep_prompts=method.deep_prompts(),
                            num_hidden_layers=2)
    method.apply(model)
    set_precision(model, precision)
    return model.train(), method


def step(model, method, batch, n: int = 1) -> None:
    method.on_round_start(model, 1)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        model.loss(model(batch), batch).backward()
        opt.step()


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", METHODS.names())
def test_only_declared_tensors_change(name: str, arch: str, precision: str) -> None:
    # Prepare
    model, method = build(name, arch, precision)
    batch = tiny_batch(arch)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # Execute
    step(model, method, batch)
    # Assert
    keys = method.update_keys(model)
    names = dict(model.named_parameters())
    assert keys and set(keys) <= set(names)
    changed = {n for n, p in names.items() if n in before and not torch.equal(p, before[n])}
    assert changed, "one step changed nothing"
    assert changed <= set(keys), f"undeclared tensors changed: {sorted(changed - set(keys))[:5]}"


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", METHODS.names())
def test_update_survives_the_wire(name: str, arch: str, precision: str) -> None:
    # Prepare
    model, method = build(name, arch, precision)
    step(model, method, tiny_batch(arch))
    fresh, fresh_method = build(name, arch, precision)
    # Execute
    update = method.encode_update(model)
    keys = list(update)
    message = encode_many([torch.from_numpy(np.ascontiguousarray(update[k])) for k in keys])
    received = {k: t.numpy() for k, t in zip(keys, decode_many(message), strict=True)}
    fresh_method.decode_update(fresh, received)
    # Assert
    assert len(message) == sum(frame_nbytes(v.shape, torch.from_numpy(np.asarray(v)).dtype)
                               for v in update.values())
    sent, got = dict(model.named_parameters()), dict(fresh.named_parameters())
    for k in method.update_keys(model):
        torch.testing.assert_close(got[k], sent[k], rtol=0, atol=0)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", METHODS.names())
def test_finalize_keeps_its_promise(name: str, arch: str, precision: str) -> None:
    # Prepare
    model, method = build(name, arch, precision)
    batch = tiny_batch(arch)
    step(model, method, batch, n=2)
    model.eval()
    with torch.no_grad():
        before = model(batch)
    # Execute
    method.finalize(model)
    with torch.no_grad():
        after = model(batch)
    # Assert
    assert torch.isfinite(after).all()
    if method.finalize_keeps_outputs:
        torch.testing.assert_close(after, before, rtol=0, atol=FINALIZE_TOL[precision])


def test_every_method_has_a_description() -> None:
    for name in METHODS.names():
        assert METHODS.get(name).description, name


@pytest.mark.parametrize("name", [n for n in METHODS.names() if METHODS.get(n).Options is not None])
def test_options_table_is_reachable_from_the_config(name: str) -> None:
    # Execute
    cfg = ExperimentConfig.from_overrides([f"method.name={name}"]).method
    method = METHODS.get(name)(cfg)
    # Assert
    assert isinstance(cfg.options_for(name), METHODS.get(name).Options)
    assert method.name == name and method.options == METHODS.get(name).Options()


def test_methods_without_options_have_none() -> None:
    for name in ("full_ft", "linear_probe", "prompt_tuning"):
        cls = METHODS.get(name)
        assert cls.name == name and cls.Options is None
        assert cls(MethodConfig(name=name)).options is None


def test_a_set_option_reaches_the_method() -> None:
    # Execute
    cfg = ExperimentConfig.from_overrides(["method.name=antidote", "method.lora.rank=4"]).method
    # Assert: Antidote trains with LoRA's table; its own table holds its defaults
    assert cfg.options_for("lora").rank == 4
    assert METHODS.get("antidote")(cfg).options == METHODS.get("antidote").Options()


def test_unknown_option_key_is_named() -> None:
    with pytest.raises(ConfigError, match="method.lora.rnk"):
        ExperimentConfig.from_overrides(["method.name=lora", "method.lora.rnk=4"])


def test_bad_option_value_is_rejected() -> None:
    with pytest.raises(ConfigError, match="method.lora.rank"):
        ExperimentConfig.from_overrides(["method.name=lora", "method.lora.rank=0"])
