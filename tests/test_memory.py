"""Client memory (fedft.resources.memory): byte counts against hand counts, split vs FL parts,
growth with the batch, the refusal of a run whose client part does not fit, and that measuring
leaves the model as it found it."""

from __future__ import annotations

import pytest
import torch

from fedft.cli import main
from fedft.config import ExperimentConfig
from fedft.data.datasets import load_raw
from fedft.errors import FedftError
from fedft.model import build_model
from fedft.model.tiny import tiny_batch, tiny_task_model
from fedft.resources.memory import (
    RUNTIME_OVERHEAD_BYTES,
    DeviceFit,
    check_fit,
    check_run_memory,
    client_parts,
    measure_client_memory,
    measure_cut,
    optimizer_bytes,
    training_batch,
)
from fedft.resources.profiles import DeviceProfile
from fedft.strategies import STRATEGIES

pytestmark = pytest.mark.usefixtures("_one_thread")
TINY = ["model.name=tiny-vit", "data.name=synthetic-images", "data.image_size=16", "data.train_size=96",
        "data.val_size=0", "data.test_size=32", "method.prompt_len=4", "partition.num_clients=4",
        "partition.min_size=4", "train.batch_size=8"]


def _setup(strategy: str, *extra: str):
    cfg = ExperimentConfig.from_overrides([*TINY, f"federation.strategy={strategy}", *extra])
    cfg = STRATEGIES.get(strategy).configure(cfg)
    raw = load_raw(cfg.data, cfg.seed)
    model, _, pre = build_model(cfg, raw.num_labels)
    return cfg, model, training_batch(cfg, raw, pre)


def _measure(strategy: str, *extra: str, cut=(0, 0)):
    cfg, model, batch = _setup(strategy, *extra)
    return measure_cut(cfg, model, batch, cut)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("optimizer,state_per_byte,steps", [("adamw", 2, 4), ("adam", 2, 4), ("sgd", 1, 0)])
def test_fl_full_counts_equal_hand_counts(optimizer, state_per_byte, steps):
    cfg, model, batch = _setup("fl_full", f"train.optimizer={optimizer}")
    r = measure_cut(cfg, model, batch, None)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) == len(list(model.parameters()))  # full fine-tuning: everything trains
    assert r.params == _nbytes(model.parameters()) + _nbytes(model.buffers())
    assert r.grads == _nbytes(trainable)
    # AdamW/Adam: exp_avg + exp_avg_sq per tensor and a float32 step scalar; SGD: one momentum buffer
    assert r.optimizer == state_per_byte * r.grads + steps * len(trainable)
    assert r.wire == 0 and r.runtime == RUNTIME_OVERHEAD_BYTES
    assert r.total == r.params + r.grads + r.optimizer + r.activations + r.wire + r.runtime


def test_split_part_counts_head_and_tail_only():
    cfg, model, batch = _setup("sfprompt")  # h = t = 0: embeddings + prompts, final norm + classifier
    r = measure_cut(cfg, model, batch, (0, 0))
    emb = model.arch.embedding_module(model.backbone)
    held = [*emb.parameters(), *model.prompt.parameters(), *model.arch.final_norm(model.backbone).parameters(),
            *model.classifier.parameters()]
    assert r.params == _nbytes(held)
    trained = [*model.prompt.parameters(), *model.arch.final_norm(model.backbone).parameters(),
               *model.classifier.parameters()]
    assert r.grads == _nbytes(trained)
    assert r.params < _nbytes(model.parameters()) / 5  # the 4 blocks stay on the server
    B, T, D = 8, 16 + 1 + 4, 32  # batch, patches + CLS + prompts, hidden
    frame = 8 + 3 * 8 + B * T * D * 4
    assert r.wire == 4 * frame + 3 * B * T * D * 4


def test_tied_weights_count_once():
    # a tiny Llama whose LM head is its input embedding matrix: head and tail both hold it
    model = tiny_task_model("llama", tie_word_embeddings=True).train()
    cfg = ExperimentConfig.from_overrides(["federation.strategy=sfl_v1", "method.name=full_ft"])
    parts = client_parts(cfg, model, (0, 0))
    r = measure_client_memory(cfg, model, parts, tiny_batch("llama", batch_size=4, seq_len=8))
    emb = model.backbone.embed_tokens.weight
    assert model.lm_head.weight is emb
    norm = model.arch.final_norm(model.backbone).weight
    assert r.params == r.grads == _nbytes([emb, norm])


def test_optimizer_bytes_of_a_paired_optimizer():
    # prompts on their own optimizer (train.prompt_optimizer): Adam for prompts, SGD momentum for the rest
    cfg = ExperimentConfig.from_overrides(["train.optimizer=sgd", "train.prompt_optimizer=adam"])
    named = {"prompt.prompt_embeddings": torch.nn.Parameter(torch.zeros(4, 8)),
             "classifier.weight": torch.nn.Parameter(torch.zeros(3, 8))}
    assert optimizer_bytes(cfg, named) == 2 * 4 * 8 * 4 + 4 + 3 * 8 * 4


@pytest.mark.parametrize("split,fl", [("sfl", "fl_prompt"), ("sfl_v1", "fl_full")])
def test_split_client_activations_below_fl(split, fl):
    s, f = _measure(split), _measure(fl)
    assert 0 < s.activations < f.activations
    assert s.params < f.params and s.total < f.total + s.wire


@pytest.mark.parametrize("strategy", ["sfprompt", "fl_full"])
def test_activations_grow_with_batch_size(strategy):
    small, large = (_measure(strategy, f"train.batch_size={b}") for b in (4, 16))
    assert small.activations < large.activations
    assert small.params == large.params and small.optimizer == large.optimizer


def test_bf16_changes_what_is_saved_not_the_weights():
    fp32, bf16 = (_measure("fl_full", f"train.precision={p}") for p in ("fp32", "bf16"))
    assert fp32.params == bf16.params and fp32.optimizer == bf16.optimizer  # float32 master weights
    assert fp32.activations != bf16.activations


def test_measuring_leaves_the_model_unchanged():
    cfg, model, batch = _setup("sfprompt", "model.readout_norm=batchnorm")
    model.train(False)
    first = next(p for p in model.parameters() if p.requires_grad)
    first.grad = torch.ones_like(first)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    measure_cut(cfg, model, batch, (1, 1))  # another cut than the config's: tail blocks unfreeze inside
    measure_cut(cfg, model, batch, (0, 0))
    assert all(torch.equal(before_state[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(first.grad, torch.ones_like(first))
    assert all(p.grad is None for p in model.parameters() if p is not first)


def _device(name: str, memory: int) -> DeviceProfile:
    return DeviceProfile(name=name, flops=1e9, memory_bytes=memory)


def test_check_fit_refuses_with_one_line():
    cfg, model, batch = _setup("fl_full")
    r = measure_cut(cfg, model, batch, None)
    ok = DeviceFit(_device("big", 2**40), (1, 2), r)
    check_fit(cfg, [ok])
    small = DeviceFit(_device("small", r.total - 1), tuple(range(0, 20, 2)), r)
    with pytest.raises(FedftError) as e:
        check_fit(cfg, [ok, small])
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("client part of fl_full needs ")
    assert "device 'small' (clients 0, 2, 4, 6, 8, 10, 12, 14, ... (10 clients))" in msg
    assert "params " in msg and "optimizer " in msg and "activations " in msg
    assert "use a split strategy (sfprompt)" in msg and "train.batch_size" in msg


def _profiles(tmp_path, mib: float) -> str:
    path = tmp_path / "profiles.toml"
    path.write_text(f'[device.box]\nflops = 1e9\nmemory_bytes = {int(mib * 2**20)}\n')
    return str(path)


def test_check_run_memory_measures_once_per_cut(tmp_path, monkeypatch):
    import fedft.resources.memory as memory

    calls = []
    real = memory.measure_cut
    monkeypatch.setattr(memory, "measure_cut", lambda *a: calls.append(a[-1]) or real(*a))
    cfg, model, batch = _setup("sfprompt", "resources.devices=box=0.5,phone-mid=0.5",
                               f"resources.profiles={_profiles(tmp_path, 4096)}")
    fits = check_run_memory(cfg, model, batch)
    assert calls == [(0, 0)]  # two devices, one cut
    assert sorted(p for f in fits for p in f.clients) == [0, 1, 2, 3]
    calls.clear()
    fits = check_run_memory(cfg, model, batch, cut_of=lambda pid: (pid % 2, 0))
    assert sorted(calls) == [(0, 0), (1, 0)]


def _run(tmp_path, mib: float, capsys) -> tuple[int, list[str]]:
    sets = [*TINY, "federation.engine=inprocess", "federation.strategy=fl_full", "federation.rounds=1",
            "output.plots=false", "resources.devices=box", f"resources.profiles={_profiles(tmp_path, mib)}"]
    rc = main(["run", "--out", str(tmp_path / "run"), *(a for s in sets for a in ("--set", s))])
    return rc, [line for line in capsys.readouterr().err.splitlines() if line.startswith("fedft:")]


def test_run_refuses_a_device_too_small(tmp_path, capsys):
    rc, lines = _run(tmp_path, 100, capsys)  # 100 MiB: less than the idle process
    assert rc == 1
    assert len(lines) == 1
    assert lines[0].startswith("fedft: error: client part of fl_full needs ")
    assert "but device 'box' (clients 0, 1, 2, 3) has 100.0 MiB" in lines[0]


def test_run_fits_a_large_device(tmp_path, capsys):
    rc, lines = _run(tmp_path, 8192, capsys)
    assert rc == 0 and lines == []
    assert (tmp_path / "run" / "summary.json").is_file()


def test_measuring_frees_what_the_forward_saved(monkeypatch):
    import gc
    import weakref

    import fedft.resources.memory as memory

    packed = []
    real = memory._Saved.pack
    monkeypatch.setattr(memory._Saved, "pack", lambda self, t: packed.append(weakref.ref(out := real(self, t))) or out)
    cfg, model, batch = _setup("fl_full")
    measure_cut(cfg, model, batch, None)
    gc.collect()
    assert packed and all(ref() is None for ref in packed)  # no saved tensor outlives the measurement


def test_check_run_memory_reads_a_cut_file(tmp_path, monkeypatch):
    import json

    import fedft.resources.memory as memory

    calls = []
    real = memory.measure_cut
    monkeypatch.setattr(memory, "measure_cut", lambda *a: calls.append(a[-1]) or real(*a))
    cuts = tmp_path / "cuts.json"
    cuts.write_text(json.dumps({"1": [1, 1], "3": [1, 1]}))
    cfg, model, batch = _setup("sfprompt", "resources.devices=phone-mid", f"resources.cuts=file:{cuts}")
    fits = check_run_memory(cfg, model, batch)
    assert sorted(calls) == [(0, 0), (1, 1)]
    assert {f.report.cut: f.clients for f in fits} == {(0, 0): (0, 2), (1, 1): (1, 3)}
    assert fits[0].report.total != fits[1].report.total
