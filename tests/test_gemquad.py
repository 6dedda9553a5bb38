"""GeMQuAD (Namboori et al., arXiv 2404.09163): parsing and filtering generated QA, the extractive
QA student (preprocessing, span prediction, EM/F1, training), the student filter rounds with a
fake student, and the BBC quote-attribution gold set."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fedft.data.qa_sets import check_quote_qa, quote_qa, quote_qa_from_text
from fedft.errors import AssetError
from fedft.qa import (
    Prediction,
    QAItem,
    best_span,
    predict_spans,
    preprocess,
    qa_scores,
    student_loss,
    train_student,
)
from fedft.recipes.gemquad import (
    GemquadOptions,
    GemquadRecipe,
    StudentFilter,
    dedupe,
    filter_rounds,
    generate_silver,
    parse_qa,
    precision,
    to_sft,
    verbatim_filter,
)

pytestmark = pytest.mark.usefixtures("_one_thread")

CTX = "Profits rose sharply, said chief executive Richard Parsons on Friday in New York."


def _item(answer: str, context: str = CTX, question: str = "Who spoke?", correct: bool | None = None) -> QAItem:
    return QAItem(context, question, answer, context.find(answer), correct=correct)


def qa_tokenizer(texts: list[str]):
    """A tiny fast BERT-like tokenizer: one id per lower-cased word or punctuation mark, with
    [CLS] question [SEP] context [SEP] and offsets."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    words = sorted({w for t in texts for w, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(t.lower())})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A:0 [SEP]:0 $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]")


def tiny_qa_model(vocab_size: int):
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    return BertForQuestionAnswering(cfg).eval()


# ---- step 1: parsing, verbatim filter, dedup ----------------------------------------------------

def test_parse_qa_reads_good_outputs_and_rejects_malformed():
    assert parse_qa("Question: Who said it?\nAnswer: Richard Parsons") == ("Who said it?", "Richard Parsons")
    assert parse_qa("Sure!\n**Question:** Who said it?\n**Answer:** \"Richard Parsons\".\n\nPassage: x") == (
        "Who said it?", "Richard Parsons")
    assert parse_qa("question: Who? answer: Bob") == ("Who?", "Bob")
    assert parse_qa('Question: Who said "it is so"?\nAnswer: \'Bob\'') == ('Who said "it is so"?', "Bob")
    for bad in ["", "Who said it? Richard Parsons", "Question: Who said it?", "Answer: Bob",
                "Question: \nAnswer: Bob", "Question: Who?\nAnswer:   \n", "Question: Who\nsaid it?\nAnswer: Bob"]:
        assert parse_qa(bad) is None, bad


def test_verbatim_filter_keeps_spans_of_the_context_with_their_start():
    items = [QAItem(CTX, "q", "Richard Parsons", -1), QAItem(CTX, "q", "Tim Cook", -1),
             QAItem(CTX, "q", "richard parsons", -1), QAItem(CTX, "q", "", -1)]
    kept = verbatim_filter(items, ignore_case=False)
    assert [(it.answer, it.answer_start) for it in kept] == [("Richard Parsons", CTX.index("Richard Parsons"))]
    folded = verbatim_filter(items)  # the case-insensitive fallback takes the context's spelling
    assert [it.answer for it in folded] == ["Richard Parsons", "Richard Parsons"]
    assert all(CTX[it.answer_start:it.answer_end] == it.answer for it in folded)
    first = verbatim_filter([QAItem("a b a b", "q", "b", -1)])[0]
    assert first.answer_start == 2  # the first occurrence


def test_dedupe_keeps_the_first_of_each_context_question_answer():
    a, b = _item("Richard Parsons", question="Who spoke?"), _item("Richard Parsons", question="who  SPOKE?")
    c, d = _item("New York", question="Who spoke?"), _item("Richard Parsons", question="Who said it?")
    assert dedupe([a, b, c, d, a]) == [a, c, d]


def test_generate_silver_counts_each_stage(monkeypatch):
    import fedft.generation as generation

    texts = ["Question: Who spoke?\nAnswer: Richard Parsons", "no format here",
             "Question: Where?\nAnswer: Paris", "Question: Who spoke?\nAnswer: Richard Parsons.",
             "Question: WHO  said it?\nAnswer: Richard Parsons"]  # the last copies the shot's question
    calls = []

    def fake_generate(model, tok, ids, cfg):
        calls.append(len(ids))
        out, texts[:] = texts[: len(ids)], texts[len(ids):]
        return SimpleNamespace(texts=out)

    monkeypatch.setattr(generation, "generate", fake_generate)
    monkeypatch.setattr(generation, "chat_prompt_ids", lambda tok, text: [1, 2, 3])
    items, stats = generate_silver(None, None, [CTX] * 5, _item("Richard Parsons", question="Who said it?"),
                                   batch_size=3, progress=False)
    assert calls == [3, 2]
    assert stats == {"generated": 5, "parsed": 4, "shot_copies": 1, "verbatim": 2, "unique": 1}
    assert items == [QAItem(CTX, "Who spoke?", "Richard Parsons", CTX.index("Richard"), "silver/0")]


def test_a_prefill_follows_the_prompt_and_is_parsed_with_the_completion(monkeypatch):
    import fedft.generation as generation

    seen = []

    def fake_generate(model, tok, ids, cfg):
        seen.extend(ids)
        return SimpleNamespace(texts=[" Who spoke?\nAnswer: Richard Parsons"] * len(ids))

    class Tok:
        def __call__(self, text, add_special_tokens=True):
            assert not add_special_tokens
            return {"input_ids": [7, 8] if text == "Question:" else [9]}

    monkeypatch.setattr(generation, "generate", fake_generate)
    monkeypatch.setattr(generation, "chat_prompt_ids", lambda tok, text: [1, 2, 3])
    items, stats = generate_silver(None, Tok(), [CTX], _item("Friday", question="When?"), progress=False,
                                   prefill="Question:")
    assert seen == [[1, 2, 3, 7, 8]]
    assert stats["parsed"] == 1 and [(it.question, it.answer) for it in items] == [("Who spoke?", "Richard Parsons")]
    _, unprefixed = generate_silver(None, Tok(), [CTX], _item("Friday", question="When?"), progress=False)
    assert unprefixed["parsed"] == 0  # the same completion without the prefill has no "Question:" label


def test_generate_silver_runs_on_a_tiny_llama():
    from fedft.generation import GenerationConfig
    from fedft.model.tiny import tiny_chat_tokenizer, tiny_task_model

    tok = tiny_chat_tokenizer([CTX, "question answer passage read write"])
    model = tiny_task_model("llama", vocab_size=len(tok), max_position_embeddings=512)
    items, stats = generate_silver(model, tok, [CTX, "Another passage."], _item("Richard Parsons"),
                                   GenerationConfig(max_new_tokens=4), batch_size=2, progress=False)
    assert stats["generated"] == 2 and stats["unique"] == len(items) <= stats["verbatim"] <= stats["parsed"] <= 2


# ---- the student: preprocessing, span prediction, scores, training ------------------------------

def test_preprocess_labels_the_answer_tokens():
    items = [_item("Richard Parsons"), _item("New York", question="Where?")]
    tok = qa_tokenizer([CTX, "Who spoke? Where?"])
    feats = preprocess(items, tok)
    assert len(feats) == 2 and feats.example == [0, 1]
    for f, it in enumerate(items):
        s, e = int(feats.start_positions[f]), int(feats.end_positions[f])
        assert tok.decode(feats.inputs["input_ids"][f, s:e + 1]) == it.answer.lower()
        assert CTX[feats.offsets[f][s][0]:feats.offsets[f][e][1]] == it.answer
        assert feats.offsets[f][0] is None and feats.offsets[f][1] is None  # [CLS] and the question


def test_preprocess_gives_cls_to_windows_without_the_answer():
    context = " ".join(f"w{i}" for i in range(40)) + " Richard Parsons spoke."
    it = QAItem(context, "Who spoke?", "Richard Parsons", context.index("Richard"))
    tok = qa_tokenizer([context, it.question])
    feats = preprocess([it], tok, max_length=16, doc_stride=4)
    assert len(feats) > 3 and set(feats.example) == {0}
    starts, ends = feats.start_positions.tolist(), feats.end_positions.tolist()
    assert starts[0] == ends[0] == 0  # the first window holds no answer: the [CLS] position
    f = len(feats) - 1
    assert tok.decode(feats.inputs["input_ids"][f, starts[f]:ends[f] + 1]) == "richard parsons"
    cut = QAItem(context, it.question, "w0 w1", 0)  # the answer straddles a window border
    assert preprocess([cut], tok, max_length=16, doc_stride=4).start_positions.tolist()[0] != 0


def test_best_span_obeys_order_length_and_context():
    offsets = [None, None, (0, 3), (4, 8), (9, 12), None]
    start = torch.tensor([9.0, 9.0, 0.0, 5.0, 0.0, 9.0])  # non-context tokens never win
    end = torch.tensor([9.0, 9.0, 6.0, 0.0, 4.0, 9.0])  # the best pair, start 3 and end 2, is out of order
    score, s, e = best_span(start, end, offsets)
    assert (s, e) == (4, 12)
    assert score == pytest.approx(float(torch.log_softmax(start, 0)[3] + torch.log_softmax(end, 0)[4]))
    assert best_span(start, end, offsets, max_answer_len=1)[1:] == (0, 3)  # one token: (2, 2) beats (3, 3)
    assert best_span(start, end, [None] * 6) is None


class _PointAt(torch.nn.Module):
    """A fake QA model whose start/end logits peak on two given token ids."""

    def __init__(self, start_id: int, end_id: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.ids = (start_id, end_id)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        logit = lambda i: (input_ids == i).float() * 10  # noqa: E731
        return SimpleNamespace(start_logits=logit(self.ids[0]), end_logits=logit(self.ids[1]))


def test_predict_spans_maps_logits_back_to_context_characters():
    context = "Filler words here. " * 6 + "Chief executive Richard Parsons said so."
    tok = qa_tokenizer([context, "Who said so?"])
    model = _PointAt(tok.convert_tokens_to_ids("richard"), tok.convert_tokens_to_ids("parsons"))
    items = [QAItem(context, "Who said so?", "", -1), QAItem(CTX, "Who said so?", "", -1)]
    preds = predict_spans(model, tok, items, max_length=20, doc_stride=6)
    assert preds[0].text == "Richard Parsons" and preds[0].start == context.index("Richard Parsons")
    assert preds[1].text == "Richard Parsons"  # the case of the context, not of the tokens


def test_em_and_f1_use_the_squad_normaliser():
    scores = qa_scores(["The  Richard Parsons!", "Richard", "nobody"], ["richard parsons", "Richard Parsons",
                                                                           ["x", "Nobody."]])
    assert scores["n"] == 3 and scores["em"] == pytest.approx(200 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1) / 3)
    with pytest.raises(ValueError):
        qa_scores(["a"], [])


def test_a_tiny_bert_student_lowers_its_training_loss():
    names = ["Alice Smith", "Bob Jones", "Carol King", "Dan Brown", "Eve Black", "Fred White", "Gus Green",
             "Hal Gray"]
    items = [QAItem(f"The chief {n} said that prices rose.", "Who said that?", n, len("The chief ")) for n in names]
    tok = qa_tokenizer([it.context + " " + it.question for it in items])
    model = tiny_qa_model(len(tok))
    before = student_loss(model, tok, items)
    losses = train_student(model, tok, items, epochs=8, lr=3e-3, batch_size=4, seed=0, progress=False)
    assert len(losses) == 16 and not model.training
    assert student_loss(model, tok, items) < 0.7 * before


# ---- step 3: filter rounds with a fake student ----------------------------------------------------

def _pool() -> list[QAItem]:
    return [_item(a, question=f"q{i}", correct=c) for i, (a, c) in enumerate(
        [("Richard Parsons", True), ("Friday", False), ("New York", True), ("Profits", False), ("chief", None)])]


def test_filter_rounds_keeps_what_the_student_agrees_with_and_logs_precision():
    pool, gold = _pool(), [_item("Richard Parsons", question="gold")]
    agree = {1: {"q0", "q1", "q2", "q4"}, 2: {"q0", "q2"}, 3: set()}  # student k -> questions it gets right
    trained, seen = [], []

    def train(silver, gold_):
        trained.append(([it.question for it in silver], list(gold_)))
        return len(trained)  # student k + 1 (M_0 is 1)

    def predict(student, items):
        seen.append(len(items))
        return [Prediction(it.answer.upper() if it.question in agree[student] else "nope", 0, 0.0) for it in items]

    res = filter_rounds(pool, gold, train, predict, rounds=2)
    assert seen == [5, 5]  # each round filters the whole pool
    assert [it.question for it in res.accepted] == ["q0", "q2"] and res.student == 3
    assert trained == [([], gold), (["q0", "q1", "q2", "q4"], gold), (["q0", "q2"], gold)]
    assert [r.get("accepted") for r in res.log] == [None, 4, 2]
    assert [len(r.get("kept", [])) for r in res.log] == [0, 4, 2]
    assert [pool[i] for i in res.log[2]["kept"]] == res.accepted
    assert res.log[1]["precision"] == pytest.approx(2 / 3) and res.log[2]["precision"] == 1.0
    assert res.log[1]["pool_precision"] == pytest.approx(2 / 4)
    trained.clear()
    assert len(filter_rounds(pool, gold, train, predict, rounds=2, train_last=False).log) == 3
    assert len(trained) == 2  # the last student is not trained without train_last


def test_student_filter_selects_agreeing_items_and_caps_by_confidence():
    pool = _pool()
    preds = [Prediction("richard parsons", 0, -1.0), Prediction("Friday.", 0, -0.5), Prediction("York", 0, -0.1),
             Prediction("x", 0, 0.0), Prediction("the chief", 0, -2.0)]
    exact = StudentFilter(lambda items: preds)
    assert exact.select(pool) == [0, 1, 4]
    assert exact.select(pool, budget=2) == [0, 1]
    assert StudentFilter(lambda items: preds, match="f1", tau=0.6).select(pool) == [0, 1, 2, 4]
    assert precision([pool[i] for i in exact.select(pool)]) == 0.5 and precision([pool[4]]) is None
    with pytest.raises(ValueError):
        StudentFilter(lambda items: preds[:2]).select(pool)


def test_options_validate_and_the_recipe_registers():
    from fedft.recipes.base import RECIPES

    assert GemquadOptions().rounds == 2
    for bad in [dict(rounds=0), dict(match="bleu"), dict(tau=0), dict(lr=0), dict(doc_stride=384),
                dict(gold_limit=-1), dict(epochs=0)]:
        with pytest.raises(ValueError):
            GemquadOptions(**bad)
    assert RECIPES.get("gemquad") is GemquadRecipe and GemquadRecipe.Options is GemquadOptions
    assert "GeMQuAD" in GemquadRecipe.description
    ex = to_sft([_item("New York")], "silver")[0]
    assert ex.response == "New York" and CTX in ex.prompt and ex.group == "silver"


# ---- step 4: the BBC quote-attribution gold set ------------------------------------------------

ARTICLE = """Firm reports record profits

The company said sales rose 5%. "Our performance was strong this year," chief executive Jane Doe said. Shares rose.

"We expect more growth in Asia," said Mr Smith, the finance director.

Analyst Tom Brown said: "The results beat expectations by a wide margin."

"It was a great year," he said. "Prices of oil were high." The Department for Transport said it agreed.
"""


def test_quote_qa_extracts_the_speakers():
    items = quote_qa_from_text(ARTICLE, "test/0")
    assert [(it.answer, it.question) for it in items] == [
        ("Jane Doe", 'Who said "Our performance was strong this year"?'),
        ("Mr Smith", 'Who said "We expect more growth in Asia"?'),
        ("Tom Brown", 'Who said "The results beat expectations by a wide margin"?')]
    assert all(it.context[it.answer_start:it.answer_end] == it.answer and it.source == "test/0" for it in items)
    assert check_quote_qa(items) == []


def test_check_quote_qa_flags_broken_items():
    good = quote_qa_from_text(ARTICLE)[0]
    broken = [good, good, QAItem(CTX, "Who?", "Tim Cook", 0), QAItem(CTX, "Who 2?", "", 0),
              QAItem(CTX, "Who 3?", CTX, 0), QAItem(CTX, "Who 4?", "Richard Parsons", 3)]
    problems = check_quote_qa(broken)
    assert len(problems) == 5
    assert [p.split(":")[0] for p in problems] == ["item 1", "item 2", "item 3", "item 4", "item 5"]
    assert "duplicate" in problems[0] and "not in the context" in problems[1] and "too long" in problems[3]


@pytest.mark.integration
def test_quote_qa_on_the_bbc_asset():
    from fedft.assets import asset_dir

    try:
        root = asset_dir("bbc-news")
    except AssetError:
        pytest.skip("the bbc-news asset is not fetched")
    tech = quote_qa(root, sections=["tech"])
    assert len(tech) > 200 and all(it.source.startswith("bbc-news/tech/") for it in tech)
    assert check_quote_qa(tech) == []
    assert quote_qa(root, sections=["tech"]) == tech  # deterministic
    with pytest.raises(ValueError):
        quote_qa(root, sections=["weather"])


@pytest.mark.integration
def test_the_recipe_end_to_end_with_the_real_student(monkeypatch):
    import fedft.generation as generation
    from fedft.assets import asset_dir
    from fedft.data.sft import SFTExample
    from fedft.model.tiny import tiny_chat_tokenizer, tiny_task_model
    from fedft.recipes.base import RecipeContext

    try:
        gold = quote_qa(asset_dir("bbc-news"), sections=["tech"])[:6]
        asset_dir("minilm-l6")
    except AssetError:
        pytest.skip("the bbc-news or minilm-l6 asset is not fetched")
    seed, silver = gold[:2], gold[2:6]  # the recipe's gold seed (gold_limit=2) and passages to generate for
    replies = iter([f"Question: {it.question}\nAnswer: {it.answer}" for it in silver])
    monkeypatch.setattr(generation, "generate",
                        lambda model, tok, ids, cfg: SimpleNamespace(texts=[next(replies) for _ in ids]))
    tok = tiny_chat_tokenizer([it.context for it in gold])
    ctx = RecipeContext(tiny_task_model("llama", vocab_size=len(tok)), tok, batch_size=4)
    opts = GemquadOptions(rounds=1, epochs=1, max_length=128, doc_stride=32, gold_sections="tech", gold_limit=2)
    pool = [SFTExample(it.context, "") for it in [*seed, *silver]]  # gold contexts are not generated for
    result = GemquadRecipe(opts).build(pool, ctx)
    r = result.report
    assert r["generation"]["generated"] == 4 and r["generation"]["unique"] == 4 and r["gold"] == 2
    assert [e["round"] for e in r["rounds"]] == [0, 1] and r["rounds"][1]["pool"] == 4
    assert len(result.examples) == r["silver"] + 2 and result.examples[-1].response == seed[1].answer


def test_without_an_example_the_prompt_is_the_instruction_and_the_passage_and_the_reply_parses():
    from fedft.recipes.gemquad import INSTRUCTION, qa_prompt, qa_reply

    item = _item("Richard Parsons", question="Who spoke?")
    assert qa_prompt(None, CTX) == f"{INSTRUCTION}\n\nPassage: {CTX}"
    assert "Who spoke?" not in qa_prompt(None, CTX) and "Who spoke?" in qa_prompt(item, "Other text.")
    assert parse_qa(qa_reply(item)) == ("Who spoke?", "Richard Parsons")
