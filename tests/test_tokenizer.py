"""Qwen tokenizer: the test vectors of design §14.7, vocabulary lookup, and parity of the
Hugging Face tokenizer.json that write_hf_tokenizer rebuilds from qwen.tiktoken."""

from __future__ import annotations

import json
import random
import shutil
import unicodedata
from pathlib import Path

import pytest

from qwen_eval.errors import UserError
from qwen_eval.model import tokenizer as T
from qwen_eval.model import tokenizer_json as TJ
from qwen_eval.model.tokenizer import HFTokenizer, QwenTokenizer, find_vocab, load_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "tokenizer"
QWEN_VOCAB_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"


@pytest.fixture(scope="module")
def tok() -> QwenTokenizer:
    return QwenTokenizer.from_path(T.packaged_vocab())


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """A folder laid out like a tiny Qwen2 checkpoint, with the rebuilt tokenizer."""
    with pytest.MonkeyPatch.context() as mp:  # never the user's ~/.cache
        mp.setenv("QWEN_EVAL_CACHE", str(tmp_path_factory.mktemp("cache")))
        directory = TJ.write_hf_tokenizer(tmp_path_factory.mktemp("qwen2-tiny"))
    (directory / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    return directory


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    """Hand-made edge cases plus real benchmark text (sources named in corpus.jsonl)."""
    handmade = [
        "Hello world", "  leading and trailing spaces  ", "I'm   here\n\n  x", "don't DON'T We'LL 'S",
        "你好，世界！深度学习模型的评估。", "日本語のテキストと한국어 텍스트", "Ünïcödé naïve café",
        "def f(x):\n\treturn x  # tab\n\n\n    pass\r\n", "a\r\nb\r\n\r\nc\rd", "\t\t\t\t  \n \n",
        " " * 300 + "x" + "\n" * 50 + "y" + "\t" * 20,
        "12345 3.14159 1,000,000 ２０２３年", "😀👍🏽👨‍👩‍👧 ✓ ∑∫√ ≠ ≤", "e\u0301 A\u030a n\u0303",
        "<|endoftext|>", "x<|im_start|>user\nhi<|im_end|>\n<|extra_0|><|extra_204|>",
        "<|endoftext|<|endoftext|>|>", "print(\"<|endoftext|>\")", "", "\x00\x01\x7f",
        "https://example.com/a?b=c&d=e#f", "$\\frac{a}{b}$ \\begin{align}x&=1\\\\\\end{align}",
    ]
    lines = (FIXTURES / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    return handmade + [json.loads(line)["text"] for line in lines]


# --- §14.7 test vectors ------------------------------------------------------------------------

@pytest.mark.parametrize("text, ids", [
    ("Hello world", [9707, 1879]),
    ("12345", [16, 17, 18, 19, 20]),
    ("I'm   here\n\n  x", [40, 2776, 256, 1588, 271, 220, 856]),
    ("don't", [15007, 944]),
    ("DON'T", [84641, 17323]),
    ("你好，世界！", [108386, 3837, 99489, 6313]),
    ("😀", [141334]),
    ("\n", [198]),
    ("\r\n", [319]),
    ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
     [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198]),
])
def test_encode_vectors(tok, text, ids):
    assert tok.encode(text) == ids
    assert tok.decode(ids) == text


def test_special_text_is_parsed_by_default(tok):
    assert tok.encode('print("<|endoftext|>")') == [1350, 445, 151643, 899]


def test_special_text_as_plain_bytes_when_not_allowed(tok):
    ids = tok.encode('print("<|endoftext|>")', allowed_special=set())
    assert ids == [1350, 9639, 91, 8691, 723, 427, 91, 82598]
    assert tok.decode(ids) == 'print("<|endoftext|>")'


def test_only_the_allowed_special_is_parsed(tok):
    ids = tok.encode('print("<|extra_0|>")<|endoftext|>', allowed_special={"<|endoftext|>"})
    assert ids == [1350, 9639, 91, 15460, 62, 15, 91, 82598, 151643]


def test_disallowed_special_raises(tok):
    with pytest.raises(UserError, match=r"<\|im_end\|>"):
        tok.encode("a<|im_end|>b", disallowed_special={"<|im_end|>"})
    with pytest.raises(UserError, match=r"<\|extra_3\|>"):
        tok.encode("<|endoftext|><|extra_3|>", allowed_special={"<|endoftext|>"}, disallowed_special="all")
    # "all" means every special that is not allowed
    assert tok.encode("<|endoftext|>", allowed_special={"<|endoftext|>"}, disallowed_special="all") == [151643]


def test_nfc_normalisation(tok):
    assert tok.encode("e\u0301") == tok.encode("é") == [963]
    assert tok.decode([68, 53839]) == "e\u0301"  # what raw tiktoken gives without NFC


def test_nfc_runs_before_special_tokens_are_found(tok):
    # ">" + U+0338 composes to "≯" under NFC, so the special token's text is gone (as in Qwen).
    assert T.SPECIAL_TOKENS["<|endoftext|>"] not in tok.encode("<|endoftext|>\u0338")


def test_decode_vectors(tok):
    assert tok.decode([51461]) == " \ufffd"  # half of a UTF-8 character
    assert tok.decode([51461], errors="ignore") == " "
    assert tok.decode([51461, 117]) == " 根"
    assert tok.decode_bytes([51461]) + tok.decode_bytes([117]) == " 根".encode()
    ids = [9707, 1879, 151643, 151646]
    assert tok.decode(ids) == "Hello world<|endoftext|><|extra_0|>"
    assert tok.decode(ids, skip_special_tokens=True) == "Hello world"
    assert tok.decode_bytes(ids) == b"Hello world<|endoftext|><|extra_0|>"
    assert tok.decode(1879) == " world"


def test_decode_errors_default_set_at_construction():
    strict = QwenTokenizer.from_path(T.packaged_vocab(), errors="strict")
    with pytest.raises(UnicodeDecodeError):
        strict.decode([51461])


@pytest.mark.parametrize("bad", [151851, 152063, -1])
def test_ids_outside_the_vocabulary_are_an_error(tok, bad):
    with pytest.raises(UserError, match=str(bad)):
        tok.decode([9707, bad])
    with pytest.raises(UserError, match=str(bad)):
        tok.decode_bytes([bad])


def test_special_token_table(tok):
    assert tok.vocab_size == 151851
    assert (tok.eod_id, tok.im_start_id, tok.im_end_id) == (151643, 151644, 151645)
    assert len(tok.special_tokens) == 208
    assert tok.special_tokens["<|extra_0|>"] == 151646
    assert tok.special_tokens["<|extra_204|>"] == 151850
    assert tok.decode([151850]) == "<|extra_204|>"
    assert tok.vocab_sha256 == QWEN_VOCAB_SHA256


def test_mmlu_answer_letters(tok):
    # Qwen's MMLU/C-Eval scripts read the logits of " A".." D" (§14.6)
    assert [tok.encode(f" {letter}") for letter in "ABCD"] == [[362], [425], [356], [422]]


def test_encode_batch_matches_encode(tok, corpus):
    assert tok.encode_batch(corpus) == [tok.encode(text) for text in corpus]
    assert tok.encode_batch(["<|endoftext|>", "a"], allowed_special=set()) == [[27, 91, 8691, 723, 427, 91, 29], [64]]


def test_round_trip(tok, corpus):
    for text in corpus:
        assert tok.decode(tok.encode(text, allowed_special=set())) == unicodedata.normalize("NFC", text)


def test_accepts_tensors_of_ids(tok):
    torch = pytest.importorskip("torch")
    assert tok.decode(torch.tensor([9707, 1879])) == "Hello world"


# --- vocabulary lookup -------------------------------------------------------------------------

def _copy_vocab(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(T.packaged_vocab(), folder / "qwen.tiktoken"))


def test_lookup_order(tmp_path):
    explicit = _copy_vocab(tmp_path / "explicit")
    checkpoint = _copy_vocab(tmp_path / "checkpoint").parent
    bare_checkpoint = tmp_path / "bare"
    bare_checkpoint.mkdir()
    assert find_vocab(explicit, checkpoint) == explicit
    assert find_vocab(explicit.parent, checkpoint) == explicit.parent / "qwen.tiktoken"
    assert find_vocab(None, checkpoint) == checkpoint / "qwen.tiktoken"
    assert find_vocab(None, bare_checkpoint) == T.packaged_vocab()
    assert find_vocab(None, None) == T.packaged_vocab()
    assert T.packaged_vocab().is_file()


def test_missing_explicit_path_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "qwen.tiktoken"
    with pytest.raises(UserError, match="tokenizer.path=.*nowhere"):
        find_vocab(missing, None)
    with pytest.raises(UserError, match="nowhere"):
        load_tokenizer(None, missing)


def test_malformed_vocabulary_is_named(tmp_path):
    bad = tmp_path / "qwen.tiktoken"
    bad.write_bytes(b"IQ== 0\nIg== 1\n")
    with pytest.raises(UserError, match="151643 distinct ranks"):
        QwenTokenizer.from_path(bad)
    bad.write_bytes(b"not base64 at all\n")
    with pytest.raises(UserError, match="line 1"):
        QwenTokenizer.from_path(bad)


def test_loading_is_cached_per_path(tmp_path):
    first = QwenTokenizer.from_path(T.packaged_vocab())
    assert QwenTokenizer.from_path(T.packaged_vocab())._encoding is first._encoding
    other = QwenTokenizer.from_path(_copy_vocab(tmp_path))
    assert other._encoding is not first._encoding
    assert other.name_or_path == str((tmp_path / "qwen.tiktoken").resolve())
    assert other.encode("Hello world") == [9707, 1879]


def test_load_tokenizer_picks_the_checkpoint_format(tmp_path, hf_dir):
    assert load_tokenizer(None).name_or_path == str(T.packaged_vocab().resolve())
    qwen1 = _copy_vocab(tmp_path / "qwen1").parent
    assert isinstance(load_tokenizer(qwen1), QwenTokenizer)
    assert load_tokenizer(qwen1).name_or_path == str((qwen1 / "qwen.tiktoken").resolve())
    assert isinstance(load_tokenizer(hf_dir), HFTokenizer)
    both = _copy_vocab(tmp_path / "both").parent
    shutil.copyfile(hf_dir / "tokenizer.json", both / "tokenizer.json")
    assert isinstance(load_tokenizer(both), QwenTokenizer)  # qwen.tiktoken wins
    assert isinstance(load_tokenizer(qwen1, hf_dir), HFTokenizer)  # the explicit path wins
    assert isinstance(load_tokenizer(hf_dir, qwen1 / "qwen.tiktoken"), QwenTokenizer)
    with pytest.raises(UserError, match="does-not-exist"):
        load_tokenizer(tmp_path / "does-not-exist")


# --- the Hugging Face tokenizer.json -----------------------------------------------------------

def test_hf_tokenizer_files(hf_dir):
    assert json.loads((hf_dir / "tokenizer_config.json").read_text())["eos_token"] == "<|endoftext|>"
    spec = json.loads((hf_dir / "tokenizer.json").read_text())
    assert len(spec["model"]["vocab"]) == 151643
    assert len(spec["model"]["merges"]) == 151643 - 256  # one merge per multi-byte token
    assert spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] == T.PRETOKENIZE_REGEX
    added = {t["content"]: t["id"] for t in spec["added_tokens"]}
    assert added == T.SPECIAL_TOKENS


@pytest.mark.parametrize("layout", ["checkpoint", "tokenizer files only"])
def test_autotokenizer_encodes_like_qwen(hf_dir, tok, corpus, layout, tmp_path):
    from transformers import AutoTokenizer

    folder = hf_dir
    if layout == "tokenizer files only":  # no config.json to name the model type
        folder = tmp_path
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(hf_dir / name, folder / name)
    auto = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert len(auto) == 151851
    expected = tok.encode_batch(corpus)
    assert [auto.encode(text, add_special_tokens=False) for text in corpus] == expected
    assert auto.encode("Hello world") == [9707, 1879]  # no BOS/EOS added by default
    assert auto.eos_token_id == auto.pad_token_id == 151643
    for ids in expected:
        assert auto.decode(ids) == tok.decode(ids)
        assert auto.decode(ids, skip_special_tokens=True) == tok.decode(ids, skip_special_tokens=True)


def test_tokenizer_json_as_is_encodes_like_qwen(hf_dir, tok, corpus):
    """The file itself (what transformers 4, vLLM or the tokenizers library read), without
    transformers 5 rebuilding the pipeline."""
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    encoded = raw.encode_batch(corpus, add_special_tokens=False)
    assert [e.ids for e in encoded] == tok.encode_batch(corpus)


def test_hf_adapter_matches_qwen(hf_dir, tok, corpus):
    hf = load_tokenizer(hf_dir)
    assert (hf.vocab_size, hf.eod_id) == (tok.vocab_size, tok.eod_id)
    assert hf.name_or_path == str(hf_dir.resolve())
    expected = tok.encode_batch(corpus)
    assert hf.encode_batch(corpus) == expected
    assert [hf.encode(text) for text in corpus[:30]] == expected[:30]
    for ids in expected + [[51461], [9707, 151643, 151850]]:
        assert hf.decode_bytes(ids) == tok.decode_bytes(ids)
        assert hf.decode(ids) == tok.decode(ids)
    with pytest.raises(UserError, match="151851"):
        hf.decode([151851])


def test_conversion_is_cached_on_disk(tmp_path, monkeypatch):
    built = []

    def fake_build(vocab_file: Path) -> str:
        built.append(vocab_file)
        return '{"converted": true}'

    monkeypatch.setattr(TJ, "build_hf_tokenizer_json", fake_build)
    monkeypatch.setattr(TJ, "_HF_JSON_MEMO", {})
    monkeypatch.setenv("QWEN_EVAL_CACHE", str(tmp_path / "cache"))
    TJ.write_hf_tokenizer(tmp_path / "a")
    assert len(built) == 1
    cached = tmp_path / "cache" / "tokenizer" / QWEN_VOCAB_SHA256 / "tokenizer.json"
    assert cached.read_text() == '{"converted": true}'
    monkeypatch.setattr(TJ, "_HF_JSON_MEMO", {})  # a new process: only the disk cache is left
    TJ.write_hf_tokenizer(tmp_path / "b")
    assert len(built) == 1
    assert (tmp_path / "b" / "tokenizer.json").read_text() == '{"converted": true}'


def test_recover_merges_on_a_toy_vocabulary():
    ranks = {bytes([b]): b for b in range(256)}
    for token in (b"ab", b"abc", b"bc", b"abcd"):
        ranks[token] = len(ranks)
    # "abcd": BPE with lower ranks gives ab (256), then abc (257); "bc" (258) comes too late
    assert TJ.recover_merges(ranks) == [(b"a", b"b"), (b"ab", b"c"), (b"b", b"c"), (b"abc", b"d")]
    ranks[b"xyz"] = len(ranks)  # no "xy" or "yz": BPE can never build it
    with pytest.raises(UserError, match="xyz"):
        TJ.recover_merges(ranks)


def test_hf_parity_on_random_token_sequences(hf_dir, tok):
    """Concatenated vocabulary tokens and random bytes: the neighbours that could make tiktoken
    merge a pair no recovered merge covers."""
    rng = random.Random(0)
    ranks, _ = T.read_vocab(T.packaged_vocab())
    tokens = list(ranks)
    texts = [b"".join(rng.choice(tokens) for _ in range(rng.randint(1, 12))).decode("utf-8", "replace")
             for _ in range(2000)]
    texts += [bytes(rng.randrange(256) for _ in range(rng.randint(1, 40))).decode("utf-8", "replace")
              for _ in range(500)]
    assert load_tokenizer(hf_dir).encode_batch(texts) == tok.encode_batch(texts)
