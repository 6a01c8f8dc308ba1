import pytest

from services.gpu_worker.engines.text import IncrementalDetokenizer, StopMatcher


class ByteTokenizer:
    """One token per UTF-8 byte, decoded like a byte-level BPE (broken bytes become U+FFFD)."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


@pytest.mark.parametrize("text", ["hello world", "naïve café ☕ 東京 🚀!", "a\nb\tc"])
def test_deltas_concatenate_to_the_full_decode_and_never_split_a_character(text):
    tok = ByteTokenizer()
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.push(t) for t in tok.encode(text)]
    deltas.append(detok.flush())
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_an_incomplete_character_is_held_back_until_complete():
    tok = ByteTokenizer()
    detok = IncrementalDetokenizer(tok)
    rocket = "🚀".encode()
    assert [detok.push(b) for b in rocket[:-1]] == ["", "", ""]
    assert detok.push(rocket[-1]) == "🚀"


def test_stop_string_cuts_the_text_before_it():
    m = StopMatcher(["\n\n", "END"])
    out = []
    for piece in ["Hello", " wor", "ld", "\n", "\nmore"]:
        text, stopped = m.push(piece)
        out.append(text)
        if stopped:
            break
    assert "".join(out) == "Hello world"
    assert stopped


def test_a_partial_stop_match_is_released_when_it_fails():
    m = StopMatcher(["END"])
    assert m.push("the EN") == ("the ", False)
    assert m.push("Dless") == ("", True)
    m2 = StopMatcher(["END"])
    assert m2.push("the EN") == ("the ", False)
    assert m2.push("d") == ("ENd", False)
    assert m2.flush() == ""


def test_no_stop_strings_passes_text_through():
    m = StopMatcher([])
    assert m.push("abc") == ("abc", False)
