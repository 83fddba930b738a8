"""Stop strings are matched across deltas and cut from the output."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from inferno_inference.stops import StopMatcher


def test_no_stops_passes_through() -> None:
    m = StopMatcher(())
    assert m.push("ab") == ("ab", False)


def test_holds_back_possible_prefix() -> None:
    m = StopMatcher(("END",))
    assert m.push("abcE") == ("abc", False)
    assert m.push("N") == ("", False)
    assert m.push("x") == ("ENx", False)
    assert m.push("EN") == ("", False)
    assert m.push("D more") == ("", True)
    assert m.text == "abcENx"


def test_matched_names_the_earliest_stop_string() -> None:
    m = StopMatcher(("world", "lo", "hello"))
    assert m.matched is None
    assert m.push("say hel") == ("say ", False)
    assert m.push("lo world") == ("", True)
    # "hello" starts first; at the same start the longer string would be named.
    assert m.matched == "hello"
    tie = StopMatcher(("ab", "abc"))
    assert tie.push("xabcd") == ("x", True)
    assert tie.matched == "abc"


def test_flush_releases_held_text() -> None:
    m = StopMatcher(("###",))
    assert m.push("a#") == ("a", False)
    assert m.flush() == "#"


@given(
    st.lists(st.text(alphabet="abc", max_size=4), max_size=8),
    st.text("abc", min_size=1, max_size=3),
)
def test_emitted_text_equals_cut_text(pieces: list[str], stop: str) -> None:
    m = StopMatcher((stop,))
    out = ""
    stopped = False
    for p in pieces:
        delta, stopped = m.push(p)
        out += delta
        if stopped:
            break
    if not stopped:
        out += m.flush()
    full = "".join(pieces)
    expected = full[: full.find(stop)] if stop in full else full
    assert out == expected
