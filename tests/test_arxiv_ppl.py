"""arXiv perplexity: the protocol (first L tokens, one forward, PPL over documents), the long-context
variants against a tiny model with a short seq_length, data loading, and the run's table and plot.

The model is the seeded tiny Qwen with seq_length 16, so "beyond seq_length" starts at 17 tokens
and every forward stays small (the real 151,936-token lm_head is what costs time here).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from cli_helpers import read_results, read_samples, run_cli
from qwen_eval.backends.qwen import QwenBackend, build_tiny
from qwen_eval.errors import UserError
from qwen_eval.model.engine import Engine
from qwen_eval.model.model import LongContextOptions, window_schedule
from qwen_eval.model.tokenizer import load_tokenizer
from qwen_eval.requests import LongContext, Rolling, request_key
from qwen_eval.runner import evaluate
from qwen_eval.task import DataSpec
from qwen_eval.tasks.arxiv_ppl import (DEFAULT_LENGTHS, DEFAULT_VARIANTS, PROMPT_PREVIEW_CHARS, ArxivPerplexity,
                                      perplexity)

FIXTURES = Path(__file__).parent / "fixtures" / "arxiv"
SEQ_LENGTH = 16
LENGTHS = [8, 16, 32]  # two at or below seq_length, one beyond
# fixture documents and their Qwen token counts
DOC_TOKENS = {"papers.jsonl:1": 273, "papers.jsonl:3": 5, "riscv/machine-intro.adoc": 366,
              "riscv/zk-intro.adoc": 327, "short.md": 12}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(None, None)


@pytest.fixture(scope="module")
def model():
    return build_tiny(0, seq_length=SEQ_LENGTH).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def backend(model, tokenizer):
    return QwenBackend(Engine(model, tokenizer, max_length=64), name="tiny-s16", path=None, fingerprint="tiny-s16")


@pytest.fixture(scope="module")
def fixture_docs():
    return ArxivPerplexity().load(DataSpec("local", str(FIXTURES)))


@pytest.fixture(scope="module")
def evaluated(backend, fixture_docs):
    task = ArxivPerplexity({"lengths": LENGTHS})
    return task, evaluate(task, fixture_docs, backend)


# --- the long-context variants -------------------------------------------------------------------


def test_variants_are_identical_up_to_seq_length_and_differ_beyond(evaluated):
    _, result = evaluated
    m = result.metrics
    for length in LENGTHS:
        values = [m[f"{v}/ppl@{length}"] for v in DEFAULT_VARIANTS]
        assert all(math.isfinite(v) and v > 1 for v in values)
        if length <= SEQ_LENGTH:  # the model card's 1K/2K columns: one number for every row
            assert values == [values[0]] * 4, length
        else:  # NTK, LogN and the window each change the numbers
            assert len({round(v, 6) for v in values}) == 4, (length, values)


def test_ppl_is_exp_of_the_mean_token_nll_of_a_plain_loop(evaluated, model, tokenizer, fixture_docs):
    _, result = evaluated
    docs = [d for d in fixture_docs if DOC_TOKENS[d.doc_id] >= 32]
    cases = {("base", 16): LongContextOptions(False, False, False),
             ("dynamic_ntk+logn", 32): LongContextOptions(True, True, False)}
    for (variant, length), options in cases.items():
        nll, tokens = 0.0, 0
        for doc in docs:
            ids = torch.tensor([tokenizer.encode(doc.text)[:length]])
            with torch.no_grad():
                logits = model(ids, options=options)[0]  # [L, V], one full forward
            for j in range(1, length):  # token 0 is context only
                nll -= float(torch.log_softmax(logits[j - 1].double(), -1)[ids[0, j]])
                tokens += 1
        assert tokens == len(docs) * (length - 1)
        assert result.metrics[f"{variant}/ppl@{length}"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)


def test_the_first_l_tokens_are_scored_causally(model, tokenizer, backend, fixture_docs):
    # token by token from growing prefixes (alpha stays 1 at or below seq_length)
    doc = fixture_docs[0]
    ids = tokenizer.encode(doc.text)[:SEQ_LENGTH]
    nll = 0.0
    with torch.no_grad():
        for j in range(1, SEQ_LENGTH):
            logits = model(torch.tensor([ids[:j]]), options=LongContextOptions(False, False, False))[0, -1]
            nll -= float(torch.log_softmax(logits.double(), -1)[ids[j]])
    (answer,) = backend.rolling([Rolling(doc.text, first_tokens=SEQ_LENGTH, max_length=SEQ_LENGTH,
                                         long_context=LongContext())])
    assert answer.n_tokens == SEQ_LENGTH - 1 and answer.text_tokens == DOC_TOKENS[doc.doc_id]
    assert -answer.loglikelihood == pytest.approx(nll, rel=1e-5)


def test_a_window_of_at_least_the_length_equals_full_attention(backend, fixture_docs):
    docs = [d for d in fixture_docs if d.doc_id.startswith("riscv/")]
    variants = ["dynamic_ntk+logn", "dynamic_ntk+logn+window_attn"]
    wide = ArxivPerplexity({"lengths": [32, 64], "variants": variants, "window_attn": [64, 64, 64, 64]})
    m = evaluate(wide, docs, backend).metrics
    for length in (32, 64):
        assert m[f"dynamic_ntk+logn+window_attn/ppl@{length}"] == pytest.approx(m[f"dynamic_ntk+logn/ppl@{length}"],
                                                                               rel=1e-9)
    narrow = ArxivPerplexity({"lengths": [64], "variants": variants, "window_attn": [32, 64, 64, 64]})
    m = evaluate(narrow, docs, backend).metrics
    assert m["dynamic_ntk+logn+window_attn/ppl@64"] != pytest.approx(m["dynamic_ntk+logn/ppl@64"], rel=1e-9)


def test_the_schedule_is_resolved_by_the_serving_model(backend, fixture_docs):
    doc = fixture_docs[0]
    schedule = window_schedule(4, SEQ_LENGTH)
    assert schedule == (16, 32, 64, 0)
    by_name, explicit = backend.rolling([
        Rolling(doc.text, first_tokens=64, max_length=64, long_context=LongContext(True, True, "schedule")),
        Rolling(doc.text, first_tokens=64, max_length=64, long_context=LongContext(True, True, schedule))])
    assert by_name == explicit
    with pytest.raises(UserError, match=r"one window size per layer \(4 for this model\)"):
        backend.rolling([Rolling(doc.text, first_tokens=64, max_length=64, long_context=LongContext(True, True, (64,)))])


def test_request_hashes_of_explicit_windows_are_unchanged():
    # Pinned: "schedule" added a value to LongContext.window_attn, not a field.
    def key(windows):
        return request_key(Rolling("text", first_tokens=1024, max_length=1024,
                                   long_context=LongContext(True, True, windows)))
    assert key(None) == "c64262a12a591fb627565eb017594bdc03027a57dc12f50a5dd98f336ec86b3e"
    assert key((8, 16, 0, 0)) == "7a6f6221c8bada47743cdfd76e4b9b68e7aaf516fcc949cc08e667f95c39fe1e"
    assert key("schedule") not in (key(None), key((8, 16, 0, 0)))


# --- protocol and metrics ------------------------------------------------------------------------


def test_requests_one_forward_of_the_first_l_tokens_per_length_and_variant(fixture_docs):
    task = ArxivPerplexity({"lengths": [64, 16]})
    requests = task.requests(fixture_docs[0])
    assert len(requests) == 2 * 4
    assert [(r.first_tokens, r.max_length, r.stride) for r in requests[:2]] == [(16, 16, None), (64, 64, None)]
    assert {r.text for r in requests} == {fixture_docs[0].text}
    assert [r.long_context for r in requests[::2]] == [
        LongContext(False, False, None), LongContext(True, False, None), LongContext(True, True, None),
        LongContext(True, True, "schedule")]


def test_short_documents_are_skipped_and_counted(evaluated):
    _, result = evaluated
    m = result.metrics
    assert [m[f"skipped@{n}"] for n in LENGTHS] == [1, 2, 2]
    for variant in DEFAULT_VARIANTS:
        assert [m[f"{variant}/docs@{n}"] for n in LENGTHS] == [4, 3, 3]
    samples = {s.doc_id: s for s in result.samples}
    assert samples["papers.jsonl:3"].score == 0.0 and samples["papers.jsonl:3"].extra["score_cell"] is None
    assert samples["short.md"].extra["score_cell"] == "dynamic_ntk+logn+window_attn/ppl@8"
    assert samples["short.md"].response["base/ppl@16"] == [0.0, 0]
    assert samples["short.md"].extra["text_tokens"] == 12


def test_samples_record_each_cell_and_the_text_they_came_from(evaluated, fixture_docs):
    task, result = evaluated
    sample = result.samples[0]
    doc = fixture_docs[0]
    assert sample.doc_id == doc.doc_id == "papers.jsonl:1"
    # the text's start (1,288 characters here) and its hash, not the whole 500 KB of a long paper
    assert doc.text.startswith(sample.prompt) and len(sample.prompt) == PROMPT_PREVIEW_CHARS
    assert sample.extra["prompt_is_preview"] is True and sample.extra["text_chars"] == len(doc.text)
    short = next(s for s in result.samples if s.doc_id == "short.md")
    assert short.prompt == fixture_docs[-1].text and short.extra["prompt_is_preview"] is False
    assert sample.extra["text_sha256"] == hashlib.sha256(doc.text.encode()).hexdigest()
    loglik, tokens = sample.response["base/ppl@32"]
    assert tokens == 31 and sample.prediction["base/ppl@32"] == pytest.approx(math.exp(-loglik / tokens))
    assert sample.score == sample.prediction[task.headline]
    json.dumps(sample.to_json())  # a samples.jsonl line


def test_perplexity_and_its_delta_method_stderr():
    ppl, se = perplexity([10.0, 30.0], [10, 10])
    assert ppl == pytest.approx(math.exp(2.0))
    # per-document mean NLL 1 and 3: se of their mean is 1, so se(PPL) = PPL * 1
    assert se == pytest.approx(math.exp(2.0) * 1.0)
    assert math.isnan(perplexity([5.0], [5])[1]) and math.isnan(perplexity([], [])[0])


def test_headline_is_the_last_variant_at_the_largest_length():
    assert ArxivPerplexity().headline == "dynamic_ntk+logn+window_attn/ppl@32768"
    assert ArxivPerplexity().lengths == DEFAULT_LENGTHS
    task = ArxivPerplexity({"lengths": [2048, 1024], "variants": ["base", "logn+dynamic_ntk"]})
    assert task.headline == "dynamic_ntk+logn/ppl@2048"
    assert task.options["variants"] == ["base", "dynamic_ntk+logn"] and task.options["lengths"] == [1024, 2048]


@pytest.mark.parametrize("options, message", [
    ({"variants": ["base", "ntk"]}, "task.variants: 'ntk' is not a variant"),
    ({"variants": ["logn", "logn"]}, "task.variants names 'logn' twice"),
    ({"variants": []}, "task.variants is empty"),
    ({"lengths": [1024, "4k"]}, "task.lengths="),
    ({"lengths": [1]}, "task.lengths="),
    ({"window_attn": "wide"}, "task.window_attn='wide'"),
    ({"window_attn": [2048, -1]}, "task.window_attn="),
])
def test_bad_options_are_one_clear_error(options, message):
    with pytest.raises(UserError, match="^" + message.replace("[", r"\[").replace("(", r"\(")):
        ArxivPerplexity(options)


# --- data ----------------------------------------------------------------------------------------


def test_folder_loading_is_recursive_sorted_and_skips_other_files(fixture_docs):
    assert [d.doc_id for d in fixture_docs] == sorted(DOC_TOKENS)  # NOTICE has no document suffix
    assert ArxivPerplexity().load(DataSpec("local", str(FIXTURES)), limit=2) == fixture_docs[:2]
    single = ArxivPerplexity().load(DataSpec("local", str(FIXTURES / "riscv" / "zk-intro.adoc")))
    assert [d.doc_id for d in single] == ["zk-intro.adoc"]


def test_jsonl_documents_use_the_text_field_and_line_numbers(tmp_path):
    (tmp_path / "papers.jsonl").write_text('{"body": "first paper"}\n\n{"body": "second"}\n', encoding="utf-8")
    docs = ArxivPerplexity({"text_field": "body"}).load(DataSpec("local", str(tmp_path)))
    assert [(d.doc_id, d.text) for d in docs] == [("papers.jsonl:1", "first paper"), ("papers.jsonl:3", "second")]
    with pytest.raises(UserError, match=r"papers.jsonl:1: no 'text' field \(fields: body\); set task.text_field"):
        ArxivPerplexity().load(DataSpec("local", str(tmp_path)))


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", b'{"text": "ok"}\n{"text": \n', r"bad.jsonl:2: not valid JSON"),
    ("num.jsonl", b'{"text": 3}\n', r"num.jsonl:1: field 'text' is int, not text"),
    ("latin1.tex", "caf\u00e9".encode("latin-1"), r"latin1.tex: not UTF-8 text"),
    ("notes.csv", b"a,b\n", r"no documents \(.txt, .tex, .md, .adoc files or .jsonl lines\)"),
])
def test_bad_data_names_the_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=message):
        ArxivPerplexity().load(DataSpec("local", str(tmp_path)))


def test_hub_rows_become_documents(monkeypatch):
    calls = []

    def fake_hub(task_name, dataset_id, config, split):
        calls.append((task_name, dataset_id, config, split))
        return [{"article": "one"}, {"article": "two"}]

    monkeypatch.setattr("qwen_eval.tasks.arxiv_ppl.load_hub_dataset", fake_hub)
    task = ArxivPerplexity({"hub_id": "someone/arxiv-latex", "hub_config": None, "hub_split": "validation",
                            "text_field": "article"})
    docs = task.load(DataSpec("hub"), limit=1)
    assert calls == [("arxiv_ppl", "someone/arxiv-latex", None, "validation")]
    assert [(d.doc_id, d.text) for d in docs] == [("validation/0", "one")]
    with pytest.raises(UserError, match=r"someone/arxiv-latex split test row 0: no 'text' field \(fields: article\)"):
        ArxivPerplexity({"hub_id": "someone/arxiv-latex"}).load(DataSpec("hub"))
    with pytest.raises(UserError, match="needs task.hub_id"):
        ArxivPerplexity({"hub_id": None}).load(DataSpec("hub"))


@pytest.mark.shared_data
def test_the_sample_is_two_long_documents_copied_from_shared_data(shared_data, tokenizer):
    docs = ArxivPerplexity().load(DataSpec("sample"))
    assert [d.doc_id for d in docs] == ["hott-book/basics.tex", "riscv-isa-manual/zk.adoc"]
    for doc in docs:
        assert len(tokenizer.encode(doc.text)) >= 32768  # enough for the 32K column
        assert doc.text == (shared_data / "arxiv" / doc.doc_id).read_text(encoding="utf-8")


@pytest.mark.shared_data
def test_the_development_copy_has_fourteen_documents(shared_data):
    docs = ArxivPerplexity().load(DataSpec("local", str(shared_data / "arxiv")))
    assert len(docs) == 14 and "stacks-project/COPYING" not in {d.doc_id for d in docs}


# --- end to end: results.json, the table and the plot --------------------------------------------


@pytest.mark.slow
def test_cli_run_writes_every_cell_the_table_and_the_plot(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    proc = run_cli("task=arxiv_ppl", "model=tiny", f"data.path={FIXTURES}", "task.lengths=[8,16,32]",
                   f"output_dir={out}", "progress=false", f"cache_dir={cache}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = read_results(out)
    metrics = results["metrics"]
    assert results["task"] == "arxiv_ppl" and results["model_card_column"] is None
    assert results["headline"] == {"metric": "dynamic_ntk+logn+window_attn/ppl@32",
                                   "value": metrics["dynamic_ntk+logn+window_attn/ppl@32"],
                                   "stderr": metrics["dynamic_ntk+logn+window_attn/ppl@32_stderr"]}
    assert results["requests"]["total"] == len(DOC_TOKENS) * 3 * 4
    assert sorted(results["artifacts"]) == ["long_context.csv", "long_context.md", "long_context.png"]
    for variant in DEFAULT_VARIANTS:
        for length in (8, 16, 32):
            assert metrics[f"{variant}/ppl@{length}"] > 1 and metrics[f"{variant}/ppl@{length}_stderr"] > 0
    assert [s["doc_id"] for s in read_samples(out)] == sorted(DOC_TOKENS)

    assert (out / "long_context.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "long_context.csv", encoding="utf-8") as f:
        rows = {row["model"]: row for row in csv.DictReader(f)}
    # the random tiny model is no model the model card reports: no reference row beside it
    assert not [row for row in rows if row.startswith(("Qwen-7B", "Qwen-14B"))]
    measured = {"base": "tiny · float32 · base", "dynamic_ntk+logn+window_attn":
                "tiny · float32 · base + dynamic_ntk + logn + window_attn"}
    for variant, row in measured.items():
        for length in ("8", "16", "32"):
            assert row in rows and rows[row][length] == f"{metrics[f'{variant}/ppl@{length}']:.2f}"
    markdown = (out / "long_context.md").read_text(encoding="utf-8")
    assert "| tiny · float32 · base + dynamic_ntk + logn " in markdown and "3168.35" not in markdown
