"""m3embed's tokenizer against transformers' XLM-R tokenizer, live, on thousands of
random strings built from many scripts and the characters that make tokenizers differ:
combining marks (stacked, reordered), Hangul jamo, every Unicode space, control
characters, emoji with ZWJ and skin tones, full-width and NFKC-sensitive characters,
literal special tokens. Run by ctest with the virtualenv's Python."""

import json
import os
import pathlib
import random
import subprocess

import pytest

FIXTURES = pathlib.Path(os.environ.get("M3_FIXTURES_DIR", pathlib.Path(__file__).parents[1] / "fixtures"))
BINARY = os.environ.get("M3_BINARY")

ALPHABET = (
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"()[]{}-_/\\@#$%^&*+=<>|~`")
    + list("àéîõüçñßøåæœÀÉÎÕÜÇÑ") + list("αβγδεζηθλμπσωΑΒΓΔΩ") + list("абвгдежзийклмнопрстуфхцчшщъыьэюяЖЩ")
    + list("的一是不了在人有我他这中大来上国个到说们为子和你地出道也时年") + list("あいうえおかきくけこアイウエオカキクケコ")
    + list("가나다라마바사아자차카타파하한국어") + list("\u1100\u1161\u11a8\u1112\u1175")  # Hangul jamo
    + list("مرحبابالعالم") + list("नमस्तेदुनिया") + list("สวัสดีชาวโลก") + list("שלוםעולם")
    + ["\u0301", "\u0300", "\u0302", "\u0303", "\u0308", "\u0323", "\u0327", "\u20dd", "\u0489"]  # combining
    + [" ", " ", " ", "  ", "\t", "\n", "\r", "\u00a0", "\u0085", "\u1680", "\u2000", "\u2003", "\u2009",
       "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000", "\u200b", "\u200d", "\ufeff"]
    + ["\x00", "\x01", "\x07", "\x1b", "\x7f", "\x9f"]  # controls
    + ["😀", "👍", "👍🏽", "👨\u200d👩\u200d👧", "🇯🇵", "❤\ufe0f", "\U0001f9d1\u200d\U0001f4bb"]
    + list("ＡＢＣ１２３！？　ｶﾞｷﾞ") + list("ﬁﬂ①②㎏㍻™½²³Ⅻⅷ℃№")
    + ["<s>", "</s>", "<pad>", "<unk>", "<mask>", "<", ">", "▁", "``", "''"]
)


def random_texts(n, seed):
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        length = rng.choice([0, 1, 2, 3, 5, 8, 13, 30])
        texts.append("".join(rng.choice(ALPHABET) for _ in range(length)))
    return texts


@pytest.mark.skipif(not BINARY, reason="M3_BINARY is not set (run through ctest)")
@pytest.mark.parametrize("seed", [1, 2])
def test_random_strings_match_transformers(tmp_path, seed):
    from transformers import AutoTokenizer

    model = FIXTURES / "tiny-st"
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    texts = random_texts(1500, seed)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    subprocess.run([BINARY, "tokenize", "--model", str(model), "--input", str(source), "--output", str(out)],
                   check=True, capture_output=True)
    got = [json.loads(line)["input_ids"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(got) == len(texts)
    mismatches = [(t, g, w) for t, g, w in zip(texts, got, tokenizer(texts)["input_ids"]) if g != w]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, e.g. " + "; ".join(
        f"{t!r}: ours {g} theirs {w}" for t, g, w in mismatches[:5])


def official_style_model(tmp_path):
    """tiny-st with the tokenizer.json pipeline of the official BGE-M3 snapshot (written by
    transformers 4): Precompiled + Replace(" {2,}", " ") normalizer, Metaspace pre-tokenizer,
    <mask> with lstrip. transformers 4 runs that file as is."""
    model = tmp_path / "model"
    model.mkdir()
    for f in (FIXTURES / "tiny-st").iterdir():
        if f.is_file():
            (model / f.name).write_bytes(f.read_bytes())
    spec = json.loads((model / "tokenizer.json").read_text(encoding="utf-8"))
    precompiled = spec["normalizer"]
    spec["normalizer"] = {"type": "Sequence", "normalizers": [
        precompiled, {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]}
    spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}
    for token in spec["added_tokens"]:
        if token["content"] == "<mask>":
            token["lstrip"] = True
    (model / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    return model


@pytest.mark.skipif(not BINARY, reason="M3_BINARY is not set (run through ctest)")
def test_random_strings_match_the_official_tokenizer_json_pipeline(tmp_path):
    from tokenizers import Tokenizer

    model = official_style_model(tmp_path)
    reference = Tokenizer.from_file(str(model / "tokenizer.json"))
    texts = random_texts(1500, 3)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    subprocess.run([BINARY, "tokenize", "--model", str(model), "--input", str(source), "--output", str(out)],
                   check=True, capture_output=True)
    got = [json.loads(line)["input_ids"] for line in out.read_text(encoding="utf-8").splitlines()]
    want = [e.ids for e in reference.encode_batch(texts)]
    mismatches = [(t, g, w) for t, g, w in zip(texts, got, want) if g != w]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, e.g. " + "; ".join(
        f"{t!r}: ours {g} theirs {w}" for t, g, w in mismatches[:5])


def byte_offsets(text, offsets):
    """tokenizers' (character) offsets as byte offsets, as TEI's Rust router reports them."""
    starts = [0]
    for ch in text:
        starts.append(starts[-1] + len(ch.encode("utf-8")))
    return [[starts[a], starts[b]] for a, b in offsets]


def offsets_by_cli(model, texts, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    subprocess.run([BINARY, "tokenize", "--model", str(model), "--input", str(source), "--output", str(out),
                    "--offsets"], check=True, capture_output=True)
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def offset_mismatches(texts, got, encodings):
    """Tokens (not special ones, whose offsets TEI does not report) whose byte offsets differ."""
    bad = []
    for text, row, e in zip(texts, got, encodings):
        assert row["input_ids"] == e.ids, text
        want = byte_offsets(text, e.offsets)
        for k, special in enumerate(e.special_tokens_mask):
            if not special and row["offsets"][k] != want[k]:
                bad.append(f"{text!r} token {k} ({e.tokens[k]!r}): ours {row['offsets'][k]} theirs {want[k]}")
                break
    return bad


OFFSET_TEXTS = ["hello world", "  héllo   wörld ", "ｈｅｌｌｏ\u3000ｗｏｒｌｄ ﬁ", "na\u0301ive <mask> x", "日本語のテキスト",
                "e\u0302\u0323x", "a  ", " x", "<s>a</s>b", "☃x y☃☃ z", "tab\there\nnew line", "½ ① ™ ㍻"]


@pytest.mark.skipif(not BINARY, reason="M3_BINARY is not set (run through ctest)")
@pytest.mark.parametrize("pipeline", ["transformers5", "official_tokenizer_json"])
def test_offsets_match_tokenizers(tmp_path, pipeline):
    """Byte offsets of every non-special token equal Hugging Face tokenizers' (what TEI's
    /tokenize reports as start/stop), on hand-picked and random strings, for both pipelines."""
    from tokenizers import Tokenizer

    model = FIXTURES / "tiny-st" if pipeline == "transformers5" else official_style_model(tmp_path)
    reference = Tokenizer.from_file(str(model / "tokenizer.json"))
    texts = OFFSET_TEXTS + random_texts(1500, 4) + random_texts(1500, 5)
    got = offsets_by_cli(model, texts, tmp_path)
    bad = offset_mismatches(texts, got, reference.encode_batch(texts))
    assert not bad, f"{len(bad)} of {len(texts)} texts differ, e.g. " + "; ".join(bad[:5])


# Digit runs, phone numbers, dates, punctuation: where paths of equal score meet ('5'+'55'
# against '55'+'5'). SentencePiece's own Viterbi, summing in float over the whole text,
# chose differently from tokenizers after some words; m3embed now segments as tokenizers.
# Full-width special-token strings normalize to "<s>", "<unk>", ... which are pieces too.
TIE_FRAGMENTS = (
    list("0123456789") * 4
    + ["55", "555", "5555", "000", "0123", "+1-555-0123", "(555) 010-9999", "12.50", "3,000", "31/12/2024",
       "v1.2.3", "x86_64", "2^10", "1e-5"]
    + list("+-.,:;/()#*%$€@&_=~'\"[]") + [" ", " ", " ", "  ", "\t", "\u3000", "\u00a0"]
    + ["на", "для", "phrase", "Call", "tel", "ext", "No.", "№", "abc", "é", "中文", "ひらがな", "한국"]
    + list("１２３４５０") + list("٠١٢٣٥") + list("①②½²³⁵₅")
    + ["<s>", "</s>", "<mask>", "<unk>", "＜s＞", "＜/s＞", "＜pad＞", "＜unk＞", "＜mask＞", "▁", "\u0378"]
)


def tie_texts(n, seed):
    rng = random.Random(seed)
    return ["".join(rng.choice(TIE_FRAGMENTS) for _ in range(rng.choice([1, 2, 3, 5, 8, 13, 21])))
            for _ in range(n)]


@pytest.mark.skipif(not BINARY, reason="M3_BINARY is not set (run through ctest)")
@pytest.mark.parametrize("pipeline", ["transformers5", "official_tokenizer_json"])
def test_equal_score_paths_match_tokenizers(tmp_path, pipeline):
    """Ids and offsets of 2,000 digit- and punctuation-rich strings equal tokenizers' (and,
    in transformers 5's pipeline, transformers' AutoTokenizer's)."""
    from tokenizers import Tokenizer

    model = FIXTURES / "tiny-st" if pipeline == "transformers5" else official_style_model(tmp_path)
    reference = Tokenizer.from_file(str(model / "tokenizer.json"))
    texts = ["на для phrase +1-555", "Call +1-555-0123 or email"] + tie_texts(2000, 6 if pipeline == "transformers5" else 7)
    got = offsets_by_cli(model, texts, tmp_path)
    encodings = reference.encode_batch(texts)
    if pipeline == "transformers5":
        from transformers import AutoTokenizer

        want = AutoTokenizer.from_pretrained(str(model))(texts)["input_ids"]
        mismatches = [(t, g["input_ids"], w) for t, g, w in zip(texts, got, want) if g["input_ids"] != w]
        assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, e.g. " + "; ".join(
            f"{t!r}: ours {g} theirs {w}" for t, g, w in mismatches[:5])
    bad = offset_mismatches(texts, got, encodings)
    assert not bad, f"{len(bad)} of {len(texts)} texts differ, e.g. " + "; ".join(bad[:5])
