"""The offline error: one sentence on how to get the weights, then the cause, shortened between words."""

import shutil
import socket
import time

import huggingface_hub.constants
import pytest

from superdiff import SuperDiffPipeline
from superdiff.generate import pipeline_class
from superdiff.hub import (
    CAUSE_CHARS,
    PROXIES,
    WeightsUnavailableError,
    hub_reachable,
    offline_kwargs,
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
