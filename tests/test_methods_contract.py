"""Contract of every registered method on tiny random ViT and BERT models.

For each name in ``METHODS.names()``: after ``apply`` and one optimizer step only the declared
tensors (``update_keys``) change; the encoded update survives the wire codec and
``decode_update`` restores the travelling tensors in a fresh model; ``finalize`` keeps the
outputs when the method says so (``finalize_keeps_outputs``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedft.config import MethodConfig
from fedft.methods import METHODS
from fedft.modeling import tiny_batch, tiny_task_model
from fedft.split.codec import decode_many, encode_many, frame_nbytes

ARCHS = ("vit", "bert")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (and far faster on a shared, loaded machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def build(name: str, arch: str):
    """A 2-layer tiny model with ``name`` applied, in train mode, and its method."""
    method = METHODS.get(name)(MethodConfig(name=name, prompt_len=2))
    model = tiny_task_model(arch, prompt_len=method.prompt_tokens(), deep_prompts=method.deep_prompts(),
                            num_hidden_layers=2)
    method.apply(model)
    return model.train(), method


def step(model, method, batch, n: int = 1) -> None:
    method.on_round_start(model, 1)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        model.loss(model(batch), batch).backward()
        opt.step()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", METHODS.names())
def test_only_declared_tensors_change(name: str, arch: str) -> None:
    # Prepare
    model, method = build(name, arch)
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


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", METHODS.names())
def test_update_survives_the_wire(name: str, arch: str) -> None:
    # Prepare
    model, method = build(name, arch)
    step(model, method, tiny_batch(arch))
    fresh, fresh_method = build(name, arch)
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


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", METHODS.names())
def test_finalize_keeps_its_promise(name: str, arch: str) -> None:
    # Prepare
    model, method = build(name, arch)
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
        torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_every_method_has_a_description() -> None:
    for name in METHODS.names():
        assert METHODS.get(name).description, name
