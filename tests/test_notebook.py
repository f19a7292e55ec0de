"""The Colab notebook, executed cell by cell in a fresh kernel on CPU with the smoke config, as
a user runs it: clone-or-use the checkout, pinned install, the demo's command, the report
displayed. Its workdir starts as a copy of the session's finished smoke run (conftest's
`smoke_run`, the same command line): the notebook's command checks every stage and skips it, so
the session runs the pipeline once."""

from __future__ import annotations

import os

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow  # about a minute: an editable reinstall, the command on a finished run


def test_the_colab_notebook_runs_as_written_and_shows_the_report(smoke_run, tmp_path_factory, monkeypatch):
    import shutil

    import nbclient
    import nbformat

    base = tmp_path_factory.getbasetemp()
    workdir = tmp_path_factory.mktemp("notebook")
    shutil.copytree(smoke_run, workdir, dirs_exist_ok=True)
    (workdir / "report" / "report.json").unlink()  # the notebook's command must notice and make it again
    for name, value in {
        "SAEFT_CHECKOUT": ROOT,
        "SAEFT_CONFIG": "configs/demo.py:smoke",
        "SAEFT_WORKDIR": str(workdir),
        "JAX_PLATFORMS": "cpu",
        "SAEFT_EXTRA_FLAGS": f"--config.data_dir={base / 'data'} --config.demo.cache_dir={base / 'cache'}",
    }.items():
        monkeypatch.setenv(name, value)  # the kernel inherits them
    notebook = nbformat.read(os.path.join(ROOT, "launch", "colab_tpu.ipynb"), as_version=4)
    # on a TPU runtime the kernel must never open the TPU itself: the pipeline's process needs it
    notebook.cells.append(nbformat.v4.new_code_cell('import sys; print("kernel imported jax:", "jax" in sys.modules)'))
    nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3").execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    assert "done: " in text and "CpuDevice" in text and "kernel imported jax: False" in text
    pages = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert pages and "<h1>SAE-FT report</h1>" in pages[0] and 'class="card"' in pages[0]  # the HTML report, shown
    assert pages[0].count("data:image/png;base64,") >= 3  # with its pictures inline
    assert (workdir / "report" / "report.json").exists()
