"""Shared fixtures: small random Hugging Face CLIP checkpoints written with `save_pretrained`."""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network

import dataclasses

import jax
import pytest

from benchmarks.common import import_torchvision_beside_cpu_torch
from saeft_jax.hf import config_to_hf
from saeft_jax.models.clip import CLIPConfig, TextConfig, VisionConfig
from saeft_jax.models.clip_shapes import clip_shape

TINY = CLIPConfig(
    vision=VisionConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32, patch_size=8
    ),
    text=TextConfig(
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        vocab_size=514,
        max_position_embeddings=16,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    ),
    projection_dim=32,
)
VITB16 = clip_shape("vitb16")

# The tests compare formulas with fp32/fp64 references. On GPUs and TPUs XLA's default precision
# lets fp32 matmuls run as TF32 or bf16 passes (about 1e-4 relative off); the CPU is exact either way.
jax.config.update("jax_default_matmul_precision", "highest")


import_torchvision_beside_cpu_torch()  # before any test imports transformers' PyTorch models


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(**changes: str) -> dict[str, str]:
    """This environment with `changes`, the repository and tests/ on PYTHONPATH: a child Python
    imports `saeft_jax`, `configs` and the test modules as pytest's `pythonpath` lets the tests do."""
    paths = [ROOT, os.path.join(ROOT, "tests"), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **changes}


def run_main(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """`python -m saeft_jax.main ARGS` in a child on the CPU, from the repository root, with `env`
    added to its environment; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "saeft_jax.main", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(JAX_PLATFORMS="cpu", **env),
    )


def smoke_config(variant: str = "smoke", **changes):
    """`configs/demo.py:<variant>` with `changes` set by dotted key ("finetune.lr": 0.5), not yet
    checked by `finish`."""
    from configs import demo

    return set_keys(demo.get_config(variant), changes)


def set_keys(config, changes: dict):
    """`config` with each dotted key of `changes` set to its value."""
    for key, value in changes.items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config


def demo_config(base, variant: str = "smoke", methods: dict | None = None, **changes):
    """`configs/demo.py:<variant>`, quiet, its data and cached model under `base` (so the tests of
    a session share them), `methods` added, `changes` set by dotted key, checked by `finish`."""
    from saeft_jax.config import finish

    config = smoke_config(variant, show_progress=False, data_dir=str(base / "data"))
    config.demo.cache_dir = str(base / "cache")
    for name, entry in (methods or {}).items():
        config.finetune.methods[name] = entry
    return finish(set_keys(config, changes))


def random_hf_clip(shape: CLIPConfig, hidden_act: str = "quick_gelu", seed: int = 0, **text_overrides):
    """A `transformers.CLIPModel` whose every parameter is perturbed away from its neat init
    (LayerNorm scales not 1, biases not 0), so a mis-mapped leaf cannot go unnoticed."""
    import torch
    import transformers

    torch.manual_seed(seed)
    shape = dataclasses.replace(
        shape,
        vision=dataclasses.replace(shape.vision, hidden_act=hidden_act),
        text=dataclasses.replace(shape.text, hidden_act=hidden_act, **text_overrides),
    )
    model = transformers.CLIPModel(config_to_hf(shape)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def write_char_tokenizer(directory) -> None:
    """A CLIP BPE tokenizer with no merges (byte-level characters only): 514 ids, <|endoftext|>
    = 513 also used for padding, as OpenAI's tokenizer does."""
    import json

    from tokenizers import pre_tokenizers

    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """A finished, uninterrupted command-line run of `configs/demo.py:smoke`, its data and cached model
    where `demo_config` keeps them: one run a session for the modules that read it (test_faults'
    reference) or continue a copy of it (test_notebook). Never changed: copy it to change it."""
    import subprocess
    import sys

    base = tmp_path_factory.getbasetemp()
    workdir = tmp_path_factory.mktemp("smoke_run")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "saeft_jax.main",
            "--config=configs/demo.py:smoke",
            f"--workdir={workdir}",
            "--config.show_progress=False",
            f"--config.data_dir={base / 'data'}",
            f"--config.demo.cache_dir={base / 'cache'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 0 and "done: " in result.stdout, result.stderr[-3000:]
    return workdir


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny quick_gelu CLIP checkpoint directory and the PyTorch model it holds."""
    model = random_hf_clip(TINY)
    path = tmp_path_factory.mktemp("tiny_clip")
    model.save_pretrained(path)
    write_char_tokenizer(path)
    return path, model


@pytest.fixture(scope="session")
def bucket():
    """`gs://bucket` served by an in-memory GCS emulator on 127.0.0.1, reached by gcsfs (the
    workdir's files), by TensorStore (Orbax's checkpoints) and by google-cloud-cpp (ArrayRecord's
    reader of prepared datasets) as they would reach Cloud Storage."""
    import logging
    import socket

    from gcp_storage_emulator.server import create_server

    for noisy in ("gcp_storage_emulator", "gcsfs"):  # gcsfs: "could not determine bucket type" (no credentials)
        logging.getLogger(noisy).setLevel(logging.ERROR)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="bucket")
    server._api = _queued_api_class()("127.0.0.1", port, server._storage)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "STORAGE_EMULATOR_HOST": endpoint,
        "TENSORSTORE_GCS_HTTP_URL": endpoint,
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": endpoint,  # google-cloud-cpp, inside ArrayRecord's reader
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "NO_GCE_CHECK": "True",
    }
    before = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    yield "gs://bucket"
    server.stop()
    for name, value in before.items():
        if value is None:
            del os.environ[name]
        else:
            os.environ[name] = value


def _queued_api_class():
    """The emulator's API thread, made to behave as Cloud Storage does where TensorStore depends on
    it: a deep accept queue (its one-request-at-a-time server keeps http.server's backlog of 5,
    which refuses parallel checkpoint writes) and the object's generation in the headers of a
    download (TensorStore reads it to version Orbax's OCDBT manifest)."""
    import functools
    from http import server as http_server

    from gcp_storage_emulator import server as emulator
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    download = objects.download

    def download_with_generation(request, response, storage, *args, **kwargs):
        try:
            info = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = info["generation"]
            response["x-goog-metageneration"] = info["metageneration"]
        except NotFound:  # the download answers 404 itself
            pass
        return download(request, response, storage, *args, **kwargs)

    objects.download = download_with_generation  # reached through objects.get(alt=media)
    for _, handlers in emulator.HANDLERS:
        for method, handler in handlers.items():
            if handler is download:
                handlers[method] = download_with_generation

    class QueuedHTTPServer(http_server.HTTPServer):
        request_queue_size = 1024

    class QueuedAPI(emulator.APIThread):
        def run(self):
            self._httpd = QueuedHTTPServer(
                (self._host, self._port), functools.partial(emulator.RequestHandler, self._storage)
            )
            self.is_running.set()
            self._httpd.serve_forever()

    return QueuedAPI
