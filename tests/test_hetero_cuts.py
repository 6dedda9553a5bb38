"""Heterogeneous split points (fedft.split.cuts): each client at its own (head_blocks, tail_blocks)
cut, the body service running blocks [h, L - t) of the server's model for it, per-client downloads
and the FedAvg of what clients have in common."""

from __future__ import annotations

import copy
import json

import grpc
import numpy as np
import pytest
import torch

from fedft import keys
from fedft.accounting import CommLedger, Kind
from fedft.body.client import BodyServiceError, GrpcTransport
from fedft.body.service import new_token, start_body_service
from fedft.config import ExperimentConfig
from fedft.errors import ConfigError
from fedft.model.tiny import tiny_batch, tiny_task_model
from fedft.resources.profiles import Assignment, Catalog, DeviceProfile
from fedft.split import SplitSpec, split_model, split_step
from fedft.split.cuts import CutPlan, apply_cut, check_plan, cut_bodies, load_cut_file, profile_table
from fedft.strategies import STRATEGIES

pytestmark = pytest.mark.usefixtures("_one_thread")

CUTS = [SplitSpec(0, 0), SplitSpec(1, 1), SplitSpec(2, 0), SplitSpec(0, 2)]
B, P, D, L = 3, 2, 32, 4
T = 1 + P + 16  # CLS + prompts + 16 patches of tiny-vit


def prompt_tuned(model):
    """The trainable set of prompt tuning: prompts, final norm, classifier (names, flags set)."""
    model.requires_grad_(False)
    for m in (model.prompt, model.classifier, model.arch.final_norm(model.backbone)):
        m.requires_grad_(True)
    return frozenset(n for n, p in model.named_parameters() if p.requires_grad)


def _block_of(model) -> dict[str, int]:
    """Parameter name -> index of the transformer block holding it."""
    index = {id(p): i for i, b in enumerate(model.blocks) for p in b.parameters()}
    return {n: index[id(p)] for n, p in model.named_parameters() if id(p) in index}


@pytest.fixture
def served():
    """A frozen body service over a tiny ViT that runs each client from its own cut, and a client
    copy of the same model."""
    server = tiny_task_model("vit", prompt_len=P, readout="mean")
    server.requires_grad_(True)  # as blocks some clients train in their tails: no effect on the body
    cuts = cut_bodies(server, SplitSpec(0, 0))
    handle = start_body_service(cuts.make(0, 0), token=new_token(), mode="frozen", cuts=cuts)
    yield handle, server, copy.deepcopy(server)
    handle.stop(0)


def transport(handle, cut, client="c0"):
    return GrpcTransport(handle.address, handle.token, CommLedger(), client=client, T=T, D=D, max_batch=B,
                         cut=None if cut is None else (cut.head_blocks, cut.tail_blocks))


@pytest.mark.parametrize("cut", CUTS, ids=str)
def test_each_cut_through_the_service_equals_the_unsplit_model(served, cut):
    handle, server, client = served
    batch = tiny_batch("vit", batch_size=B)
    parts = split_model(client, cut)
    with torch.no_grad(), transport(handle, cut) as tr:
        h, mask = parts.head(batch)
        logits = parts.tail(tr.forward(h, mask), mask)
        expected = client(batch)
    assert torch.allclose(logits, expected, atol=1e-5, rtol=1e-4)
    assert len(handle.service._cut_replicas) == (0 if cut == SplitSpec(0, 0) else 1)


@pytest.mark.parametrize("cut", CUTS, ids=str)
def test_prompt_and_tail_gradients_through_the_service_match_the_unsplit_model(served, cut):
    handle, server, client = served
    base = prompt_tuned(client)
    reference = copy.deepcopy(client)
    parts = apply_cut(client, cut, base, trains_tail=True, train_head=False)
    batch = tiny_batch("vit", batch_size=B)
    with transport(handle, cut) as tr:
        split_step(parts, batch, tr, client.loss)
    apply_cut(reference, cut, base, trains_tail=True, train_head=False)
    reference.loss(reference(batch), batch).backward()
    got = {n: p.grad for n, p in client.named_parameters() if p.grad is not None}
    want = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys() and "prompt.prompt_embeddings" in got
    block = _block_of(client)
    trained = {block[n] for n in got if n in block}
    assert trained == set(range(L - cut.tail_blocks, L))  # a block trains exactly when it is in the tail
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-5, rtol=1e-4), name
    assert all(p.grad is None for p in server.parameters())  # the frozen body formed input grads only


def test_apply_cut_resets_the_previous_clients_flags():
    model = tiny_task_model("vit", prompt_len=P, readout="mean")
    base = prompt_tuned(model)
    apply_cut(model, SplitSpec(0, 2), base, trains_tail=True, train_head=False)
    parts = apply_cut(model, SplitSpec(1, 1), base, trains_tail=True, train_head=False)
    trained, block = set(parts.client_named_parameters()), _block_of(model)
    assert {block[n] for n in trained if n in block} == {L - 1} and base <= trained
    assert not any(p.requires_grad for n, p in model.named_parameters() if block.get(n) == 2)  # frozen again


def test_a_bad_cut_is_refused_for_that_client_only(served):
    handle, _, client = served
    with pytest.raises(BodyServiceError) as e, transport(handle, SplitSpec(3, 2), client="bad"):
        pass
    assert e.value.code is grpc.StatusCode.INVALID_ARGUMENT and "\n" not in str(e.value)
    assert "does not fit the model's 4 blocks" in str(e.value)
    parts = split_model(client, SplitSpec(1, 1))  # the service keeps serving the others
    batch = tiny_batch("vit", batch_size=B)
    with torch.no_grad(), transport(handle, SplitSpec(1, 1)) as tr:
        h, mask = parts.head(batch)
        assert tr.forward(h, mask).shape == (B, T, D)
    assert handle.service.session_count() == 0


def test_a_trainable_body_serves_only_its_own_cut():
    model = tiny_task_model("vit", prompt_len=P, readout="mean")
    cuts = cut_bodies(model, SplitSpec(1, 1))
    sgd = lambda ps: torch.optim.SGD(ps, lr=0.1)  # noqa: E731
    with start_body_service(cuts.make(1, 1), token=new_token(), mode="shared", make_optimizer=sgd,
                            cuts=cuts) as handle:
        with pytest.raises(BodyServiceError, match="a trainable body serves one cut"), \
                transport(handle, SplitSpec(0, 2)):
            pass
        with transport(handle, SplitSpec(1, 1)) as tr:
            assert tr.session is not None


def test_cut_file_profiles_and_plan_checks(tmp_path):
    default = SplitSpec(0, 1)
    path = tmp_path / "cuts.json"
    path.write_text(json.dumps({"2": [1, 1], "0": [0, 0]}))
    assert load_cut_file(str(path), 4, default).tolist() == [[0, 0], [0, 1], [1, 1], [0, 1]]
    for doc, what in [({"4": [0, 0]}, "not an integer in 0..3"), ({"1": [1]}, "two integers >= 0"),
                      ({"a": [0, 0]}, "not an integer"), ([1, 2], "holds a list")]:
        path.write_text(json.dumps(doc))
        with pytest.raises(ConfigError, match=what) as e:
            load_cut_file(str(path), 4, default)
        assert "\n" not in str(e.value)
    weak = DeviceProfile("weak", 1e9, 2**30, head_blocks=0, tail_blocks=0)
    strong = DeviceProfile("strong", 1e12, 2**33, head_blocks=1)
    table = profile_table(Assignment((weak, strong), np.array([1, 0, 1], dtype=np.int32)), default)
    assert table.tolist() == [[1, 1], [0, 0], [1, 1]]  # strong: its head, the config's tail
    model = tiny_task_model("vit", readout="mean")
    check_plan(CutPlan(default, table, "profile"), model)
    table[1] = [3, 2]
    with pytest.raises(ConfigError, match=r"client\(s\) \[1\] at cut .* \(3, 2\).*exceeds the model's 4") as e:
        check_plan(CutPlan(default, table, "profile"), model)
    assert "\n" not in str(e.value)


def test_profile_cuts_come_from_each_clients_device():
    from fedft.split.cuts import plan_cuts

    cfg = ExperimentConfig.from_overrides(["partition.num_clients=6", "resources.devices=weak=0.5,strong=0.5",
                                           "resources.cuts=profile", "split.tail_blocks=1"])
    weak = DeviceProfile("weak", 1e9, 2**30, head_blocks=0, tail_blocks=0)
    strong = DeviceProfile("strong", 1e12, 2**33, head_blocks=2)  # no tail: the config's
    catalog = Catalog({"weak": weak, "strong": strong}, {})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("fedft.resources.profiles.load_catalog", lambda path="": catalog)
        plan = plan_cuts(cfg)
    assert sorted(map(tuple, plan.table.tolist())) == [(0, 0)] * 3 + [(2, 1)] * 3
    assert plan.distinct() == [SplitSpec(0, 0), SplitSpec(2, 1)] and plan.heterogeneous
    with pytest.raises(ConfigError, match="needs device profiles"):
        plan_cuts(ExperimentConfig.from_overrides(["resources.cuts=profile"]))


TINY = [
    "model.name=tiny-vit", "data.name=synthetic-images", "data.image_size=16", "data.train_size=96",
    "data.test_size=32", "partition.scheme=iid", "partition.num_clients=3", "partition.min_size=4",
    "federation.rounds=2", "federation.engine=inprocess", "train.batch_size=8", "train.eval_batch_size=32",
    f"method.prompt_len={P}", "output.plots=false", "train.lr=0.05", "model.readout=mean",
]
FILE_CUTS = {"0": [0, 0], "1": [1, 1], "2": [0, 2]}  # blocks 2 and 3 train; blocks 0 and 1 do not


def _config(tmp_path, strategy: str, *extra: str, cuts: dict | None = None) -> ExperimentConfig:
    path = tmp_path / "cuts.json"
    path.write_text(json.dumps(FILE_CUTS if cuts is None else cuts))
    cfg = ExperimentConfig.from_overrides([*TINY, f"federation.strategy={strategy}",
                                           f"resources.cuts=file:{path}", *extra])
    return STRATEGIES.get(strategy).configure(cfg)


def _mean(ups: list[tuple[dict, float]], name: str) -> np.ndarray:
    total = sum(w for _, w in ups)
    return sum(u[name].astype(np.float64) * (w / total) for u, w in ups)


def test_federated_run_averages_each_tensor_over_the_clients_that_hold_it(tmp_path, monkeypatch):
    import fedft.federated.engine as engine
    from fedft.federated.records import from_arrays
    from fedft.federated.server import ServerRuntime
    from fedft.outputs import RunDir

    seen: list[tuple[int, int, dict, dict, dict]] = []  # (round, pid, download, upload, metrics)
    real = engine.handle_train

    def spy(content, pid, state=None):
        reply = real(content, pid, state)
        metrics = {k: float(v) for k, v in reply[keys.METRICS].items()}
        seen.append((int(content[keys.CONFIG][keys.SERVER_ROUND]), pid, from_arrays(content[keys.ARRAYS]),
                     from_arrays(reply[keys.ARRAYS]), metrics))
        return reply

    monkeypatch.setattr(engine, "handle_train", spy)
    srv = ServerRuntime(_config(tmp_path, "sfprompt"), RunDir(tmp_path / "run"))
    before = {n: p.detach().clone() for n, p in srv.model.named_parameters()}
    block = _block_of(srv.model)
    engine.run_inprocess(srv, progress=False)
    assert [(r, p) for r, p, *_ in seen] == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    for _, pid, down, up, metrics in seen:  # each client gets and sends exactly its cut's tensors
        h, t = FILE_CUTS[str(pid)]
        assert (metrics[keys.HEAD_BLOCKS], metrics[keys.TAIL_BLOCKS]) == (h, t)
        want = set(range(L - t, L))
        assert {block[n] for n in down if n in block} == want == {block[n] for n in up if n in block}
        assert "prompt.prompt_embeddings" in up and "classifier.weight" in up
    rounds = {r: {pid: (d, u, m) for rr, pid, d, u, m in seen if rr == r} for r in (1, 2)}
    state = {n: p.detach().numpy() for n, p in srv.model.named_parameters()}
    for name, b in block.items():
        holders = [pid for pid in (0, 1, 2) if name in rounds[2][pid][1]]
        assert holders == {0: [], 1: [], 2: [2], 3: [1, 2]}[b]
        if not holders:  # nobody trained it: the pre-trained weights
            assert torch.equal(srv.model.get_parameter(name), before[name])
            continue
        ups = [(rounds[2][p][1], rounds[2][p][2][keys.NUM_EXAMPLES]) for p in holders]
        assert np.allclose(state[name], _mean(ups, name), atol=1e-6), name
        r1 = [(rounds[1][p][1], rounds[1][p][2][keys.NUM_EXAMPLES]) for p in holders]
        assert np.allclose(rounds[2][holders[0]][0][name], _mean(r1, name), atol=1e-6)  # round 2's download
    ups = [(rounds[2][p][1], rounds[2][p][2][keys.NUM_EXAMPLES]) for p in (0, 1, 2)]
    assert np.allclose(state["classifier.weight"], _mean(ups, "classifier.weight"), atol=1e-6)
    assert not np.allclose(state[next(n for n, b in block.items() if b == 2)],
                           before[next(n for n, b in block.items() if b == 2)].numpy())  # block 2 trained
    params = {c: sum(e.nbytes for e in srv.ledger if e.kind == Kind.PARAMS_DOWN and e.client == c)
              for c in ("0", "1", "2")}
    assert params["0"] < params["1"] < params["2"], params  # exact per-client downloads


def test_a_cut_the_model_cannot_take_stops_the_run_with_one_line(tmp_path):
    from fedft.runner import run

    with pytest.raises(ConfigError) as e:
        run(_config(tmp_path, "sfprompt", cuts={"1": [3, 2]}), tmp_path / "run", show=False)
    msg = str(e.value)
    assert "\n" not in msg and "client(s) [1]" in msg and "head_blocks + tail_blocks <= 4" in msg


@pytest.mark.parametrize("strategy", ["sfl_v2", "sfl_v1", "sl"])
def test_trainable_body_strategies_refuse_heterogeneous_cuts(tmp_path, strategy):
    from fedft.runner import run

    with pytest.raises(ConfigError) as e:
        run(_config(tmp_path, strategy), tmp_path / "run", show=False)
    msg = str(e.value)
    assert "\n" not in msg and f"{strategy} trains the body" in msg and "resources.cuts=config" in msg


def test_aggregators_that_need_equal_updates_refuse_heterogeneous_cuts(tmp_path):
    from fedft.runner import run

    with pytest.raises(ConfigError, match="federation.aggregator=fedavg") as e:
        run(_config(tmp_path, "sfprompt", "federation.aggregator=krum"), tmp_path / "run", show=False)
    assert "\n" not in str(e.value)
