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


def test_marks_come_out_with_their_text() -> None:
    m: StopMatcher[int] = StopMatcher(("END",))
    assert m.push("ab", 1) == ("ab", False)
    assert m.take_marks() == [1]
    assert m.push("E", 2) == ("", False)  # may start "END": held, and its mark with it
    assert m.take_marks() == []
    assert m.push("x", 3) == ("Ex", False)
    assert m.take_marks() == [2, 3]
    assert m.take_marks() == []


def test_marks_of_a_stop_string_are_dropped() -> None:
    m: StopMatcher[int] = StopMatcher(("END",))
    assert m.push("ok E", 1) == ("ok ", False)
    m.push("N", 2)
    assert m.take_marks() == []
    assert m.push("D!", 3) == ("", True)
    # Token 1 put "ok " before the cut, so it stays; 2 and 3 are all stop string or after.
    assert m.take_marks() == [1]


def test_a_mark_that_straddles_the_cut_is_kept() -> None:
    m: StopMatcher[int] = StopMatcher(("##",))
    m.push("a", 1)
    assert m.push("b#", 2) == ("b", False)
    assert m.take_marks() == [1]
    assert m.push("#c", 3) == ("", True)
    assert m.take_marks() == [2]


def test_an_empty_delta_waits_for_the_text_after_it() -> None:
    # A token that ends inside a character adds no text; the character it starts may be
    # a stop string, so its mark goes with whatever the next token decides.
    m: StopMatcher[int] = StopMatcher(("é",))
    m.push("a", 1)
    m.push("", 2)
    assert m.take_marks() == [1]
    assert m.push("é", 3) == ("", True)
    assert m.take_marks() == []
    kept: StopMatcher[int] = StopMatcher(("é",))
    kept.push("", 1)
    kept.push("e", 2)
    assert kept.take_marks() == [1, 2]


def test_flush_releases_held_marks_and_no_stops_pass_them_through() -> None:
    m: StopMatcher[int] = StopMatcher(("###",))
    assert m.push("a#", 1) == ("a", False)
    m.push("", 2)
    assert m.take_marks() == []
    assert m.flush() == "#"
    assert m.take_marks() == [1, 2]
    plain: StopMatcher[int] = StopMatcher(())
    plain.push("", 1)
    plain.push("x", 2)
    assert plain.take_marks() == [1, 2]


@given(
    st.lists(st.text(alphabet="abc", min_size=1, max_size=3), max_size=10),
    st.text("abc", min_size=1, max_size=3),
)
def test_released_marks_are_the_tokens_that_reach_the_output(pieces: list[str], stop: str) -> None:
    m: StopMatcher[int] = StopMatcher((stop,))
    out, marks = "", []
    seen = len(pieces)
    for i, p in enumerate(pieces):
        delta, stopped = m.push(p, i)
        out += delta
        marks += m.take_marks()
        if stopped:
            seen = i + 1
            break
        # No mark runs ahead of its text.
        assert len("".join(pieces[j] for j in marks)) <= len(out)
    else:
        out += m.flush()
        marks += m.take_marks()
    starts = [sum(len(q) for q in pieces[:j]) for j in range(seen)]
    # Exactly the pieces that put some text before the cut, in order.
    assert marks == [j for j in range(seen) if starts[j] < len(out)]
