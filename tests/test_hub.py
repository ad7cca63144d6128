"""The offline error: one sentence on how to get the weights, then the cause, shortened between words."""

import json
import shutil
import socket
import time

import huggingface_hub.constants
import pytest

from superdiff import SuperDiffPipeline
from superdiff.generate import pipeline_class
from superdiff.hub import (
    CAUSE_CHARS,
    PROBE_S,
    PROXIES,
    WeightsUnavailableError,
    explain_unavailable,
    folder_errors,
    hub_reachable,
    missing_components,
    offline_kwargs,
    shorten,
    weights_unavailable,
)
from superdiff.testing import tiny_pipeline


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


def whole_words(line: str, limit: int) -> str:
    """The longest run of line's first words that is at most limit characters long."""
    words = line.split(" ")
    return max(
        (" ".join(words[:k]) for k in range(1, len(words)) if len(" ".join(words[:k])) <= limit), key=len
    )


@pytest.mark.parametrize("end", [CAUSE_CHARS - 1, CAUSE_CHARS, CAUSE_CHARS + 1])
def test_the_cut_keeps_every_whole_word_that_fits(end):
    """A word that ends at the limit stays; a line of exactly CAUSE_CHARS is not cut."""
    line = "w" * (end - 5) + " abcd" + " tail" * 20  # "abcd" ends at character `end`
    assert shorten(line) == whole_words(line, CAUSE_CHARS) + " …"
    assert shorten(line[:CAUSE_CHARS]) == line[:CAUSE_CHARS]


def test_the_cut_drops_the_punctuation_before_it():
    assert shorten("x" * 195 + ", " + "y" * 50) == "x" * 195 + " …"


@pytest.mark.parametrize("cause", [OSError(), OSError("  \n ")])
def test_an_empty_cause_adds_nothing(cause):
    message = str(weights_unavailable("CompVis/sd", cause))
    assert message == str(weights_unavailable("CompVis/sd")) and "cause" not in message


@pytest.mark.parametrize("name", ["./sd", "../sd", "~/sd", "/sd", "models/sd/v1-4", "C:\\models\\sd"])
def test_a_path_is_not_taken_for_a_hub_id(name):
    assert str(weights_unavailable(name)).startswith(f"{name!r} is not a directory: pass the folder")
    assert str(weights_unavailable("CompVis/sd")).startswith("Cannot load 'CompVis/sd'")


def test_the_error_keeps_the_cause_as_context_not_as_a_chained_cause():
    """`from None`: one line, no "direct cause" traceback; the OSError stays in __context__ for debugging."""
    with pytest.raises(WeightsUnavailableError) as err:
        with explain_unavailable("CompVis/sd"):
            raise OSError("offline mode is on")
    assert err.value.__cause__ is None and str(err.value.__context__) == "offline mode is on"


def test_an_explained_error_passes_unchanged(tmp_path):
    """Nested loads (a folder's error inside a Hub id's, or inside --model's) keep the first explanation."""
    explained = WeightsUnavailableError("'sd' lacks unet/ that its model_index.json names")
    for context in (explain_unavailable("CompVis/sd"), folder_errors(tmp_path, "--model")):
        with pytest.raises(WeightsUnavailableError) as err:
            with context:
                raise explained
        assert err.value is explained


def test_missing_components_are_the_named_ones_without_files(tmp_path):
    """A component saved as [null, null] (SDXL's image_encoder) is not one; an empty folder is missing."""
    index = {
        "_class_name": "SuperDiffPipeline",
        "_diffusers_version": "0.30.0",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "image_encoder": [None, None],
    }
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    (tmp_path / "vae").mkdir()  # empty
    assert missing_components(str(tmp_path)) == ["vae", "text_encoder"]


def test_a_file_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.safetensors").write_bytes(b"")
    message = str(weights_unavailable("weights.safetensors"))
    assert message.startswith("'weights.safetensors' is a file: pass the folder that holds model_index.json")
    assert "hf download" not in message


@pytest.fixture
def hub_down(monkeypatch):
    """The Hub refuses connections (as on a machine without internet), whatever this machine can reach."""

    def refused(*args, **kwargs):
        raise ConnectionRefusedError(111, "Connection refused")

    for name in PROXIES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", refused)
    hub_reachable.cache_clear()
    yield
    hub_reachable.cache_clear()


def test_an_unreachable_hub_is_answered_from_the_cache_at_once(hub_down, tmp_path):
    """huggingface_hub retries an unreachable Hub for about 30 s; after the probe the cache answers."""
    assert offline_kwargs("CompVis/stable-diffusion-v1-4") == {"local_files_only": True}
    assert offline_kwargs(str(tmp_path)) == {}  # a local folder needs no Hub
    start = time.perf_counter()  # the CLI looks up the pipeline class in the model's config first
    with pytest.raises(WeightsUnavailableError, match="not in the local Hugging Face cache"):
        pipeline_class("superdiff-kit/no-such-model")
    assert time.perf_counter() - start < 10


def test_the_sweeps_clip_scorer_is_answered_from_the_cache_at_once_too(hub_down, tmp_path, monkeypatch):
    from superdiff.sweep.scoring import ClipScorer

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match="openai/clip-vit-base-patch32"):
        ClipScorer.from_pretrained("openai/clip-vit-base-patch32")
    assert time.perf_counter() - start < 10


def test_the_probe_asks_hf_endpoints_host_once(hub_down, monkeypatch):
    """A mirror set by HF_ENDPOINT is the Hub; the answer is kept, so a second load waits no PROBE_S."""
    asked = []

    def refused(address, timeout=None):
        asked.append((address, timeout))
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", refused)
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example.org")
    assert offline_kwargs("CompVis/sd") == offline_kwargs("CompVis/sd") == {"local_files_only": True}
    assert asked == [(("hf-mirror.example.org", 443), PROBE_S)]


@pytest.mark.parametrize(
    "endpoint, address",
    [("http://127.0.0.1:8080", ("127.0.0.1", 8080)), ("http://hf.lan", ("hf.lan", 80))],
)
def test_the_probe_asks_hf_endpoints_own_port(hub_down, monkeypatch, endpoint, address):
    """A mirror on another port, or on plain http, is probed there: a mirror that is up is used."""
    asked = []
    monkeypatch.setattr(
        socket, "create_connection", lambda a, timeout=None: asked.append(a) or socket.socket()
    )
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    assert offline_kwargs("CompVis/sd") == {} and asked == [address]


def test_a_local_folder_or_path_needs_no_probe(hub_down, tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "create_connection", lambda *args, **kwargs: pytest.fail("probed"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sd").mkdir()
    assert offline_kwargs("sd") == offline_kwargs("./no-such-sd") == {}


def test_behind_a_proxy_the_hub_is_assumed_reachable(hub_down, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.org:3128")
    assert offline_kwargs("CompVis/stable-diffusion-v1-4") == {}


@pytest.mark.parametrize("gone", ["unet", "scheduler"])
def test_a_folder_missing_a_component_names_it(tmp_path, gone):
    tiny_pipeline().save_pretrained(tmp_path / "sd")
    shutil.rmtree(tmp_path / "sd" / gone)
    (tmp_path / "sd" / "vae" / "config.json").unlink()  # a folder that is there stays unnamed
    with pytest.raises(WeightsUnavailableError) as err:
        SuperDiffPipeline.from_pretrained(str(tmp_path / "sd"))
    assert str(err.value) == (
        f"{str(tmp_path / 'sd')!r} lacks {gone}/ that its model_index.json names: an incomplete download or "
        "copy; fetch the whole pipeline folder again"
    )
