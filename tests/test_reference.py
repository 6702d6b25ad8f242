"""The reference numbers load as data, with provenance, and a user's own set loads the same way."""

from __future__ import annotations

import json
import math

import pytest

from qwen_eval.errors import UserError
from qwen_eval.reference import (load_long_context, load_model_card, load_reference, split_variant,
                                 variant_label)

CARD_COLUMNS = ["MMLU", "C-Eval", "GSM8K", "MATH", "HumanEval", "MBPP", "BBH", "CMMLU"]


def test_model_card_table_has_all_models_columns_and_shots():
    card = load_model_card()
    assert card.kind == "benchmarks"
    assert list(card.values.columns) == CARD_COLUMNS
    assert len(card.values) == 11
    assert list(card.values.index[[0, -1]]) == ["LLaMA2-7B", "Qwen-14B"]
    assert card.shots == {"MMLU": 5, "C-Eval": 5, "GSM8K": 8, "MATH": 4, "HumanEval": 0, "MBPP": 3,
                          "BBH": 3, "CMMLU": 5}
    assert card.values.loc["Qwen-14B"].tolist() == [66.3, 72.1, 61.3, 24.8, 32.3, 40.8, 53.4, 71.0]
    assert card.values.loc["Qwen-7B (original)", "GSM8K"] == 51.6
    # Not reported by the model card: empty cells, never zeros.
    assert math.isnan(card.values.loc["LLaMA2-34B", "C-Eval"])
    assert math.isnan(card.values.loc["Qwen-7B (original)", "MATH"])
    assert card.values.isna().sum().sum() == 6  # LLaMA2-34B 2, ChatGLM2-6B 3, Qwen-7B (original) 1
    assert "model card" in card.source and card.retrieved


def test_long_context_table_rows_are_model_plus_variant():
    table = load_long_context()
    assert table.kind == "long_context"
    assert list(table.values.columns) == [1024, 2048, 4096, 8192, 16384, 32768]
    assert table.values.loc["Qwen-14B", 16384] == 3168.35
    assert table.values.loc["Qwen-7B + dynamic_ntk + logn + window_attn", 32768] == 3.17
    assert math.isnan(table.values.loc["Qwen-14B", 1024])
    assert split_variant("Qwen-7B (original) + dynamic_ntk + logn") == ("Qwen-7B (original)", "dynamic_ntk+logn")
    assert split_variant("Qwen-14B") == ("Qwen-14B", "base")
    for label in table.values.index:
        assert variant_label(*split_variant(label)) == label
    assert table.retrieved


def test_a_users_reference_set_loads_with_its_sources(tmp_path):
    (tmp_path / "ours.csv").write_text("model,MMLU,GSM8K\nOurs-7B,61.2,\nOurs-14B,68.0,55.5\n", encoding="utf-8")
    (tmp_path / "sources.json").write_text(json.dumps(
        {"ours.csv": {"name": "paper", "source": "our paper, table 2", "retrieved": "2026-01-02",
                      "shots": {"MMLU": 0}}}), encoding="utf-8")
    ours = load_reference(tmp_path / "ours.csv")
    assert (ours.name, ours.source, ours.retrieved, ours.shots) == ("paper", "our paper, table 2", "2026-01-02",
                                                                     {"MMLU": 0})
    assert ours.values.loc["Ours-14B", "GSM8K"] == 55.5
    assert math.isnan(ours.values.loc["Ours-7B", "GSM8K"])

    (tmp_path / "bare.csv").write_text("model,2048,4096\nMine,3.5,3.9\n", encoding="utf-8")
    bare = load_reference(tmp_path / "bare.csv")
    assert bare.kind == "long_context" and bare.name == "bare" and bare.values.loc["Mine", 4096] == 3.9


@pytest.mark.parametrize("text, message", [
    ("model,MMLU\nA,sixty\n", "row 'A', column 'MMLU': 'sixty' is not a number"),
    ("name,MMLU\nA,60\n", "header must start with 'model'"),
    ("model,MMLU\nA,60\nA,61\n", "model 'A' appears twice"),
])
def test_a_bad_reference_file_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match="bad.csv") as err:
        load_reference(path)
    assert message in str(err.value)
    with pytest.raises(UserError, match="no such file"):
        load_reference(tmp_path / "missing.csv")
