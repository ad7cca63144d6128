"""The offline error: one sentence on how to get the weights, then the cause, shortened between words."""

from superdiff.hub import CAUSE_CHARS, weights_unavailable


def cause_of(err) -> str:
    return str(err).split(" (cause: ", 1)[1].removesuffix(")")


def test_long_cause_is_cut_between_words():
    line = "Cannot reach https://huggingface.co/api/models/CompVis/sd " + "superposition " * 30
    cause = cause_of(weights_unavailable("CompVis/stable-diffusion-v1-4", OSError(line + "\nsecond line")))
    assert cause.endswith(" …") and len(cause) <= CAUSE_CHARS + 2
    assert line.startswith(cause.removesuffix(" …") + " ")  # whole words only, nothing else
    assert "second line" not in cause


def test_short_cause_is_kept_whole():
    cause = cause_of(weights_unavailable("CompVis/stable-diffusion-v1-4", OSError("offline mode is on")))
    assert cause == "offline mode is on"


def test_one_long_word_is_kept_whole():
    url = "https://example.org/" + "a" * 300
    assert cause_of(weights_unavailable("CompVis/sd", OSError(f"{url} unreachable"))) == url + " …"
