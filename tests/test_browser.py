"""The feature browser: its cards' numbers against a brute-force NumPy count, and the page it
makes (self-contained, escaped, readable without a script). The page in a real browser is tested
on the smoke run (tests/test_pipeline.py)."""

from __future__ import annotations

import html
import re

import numpy as np
import pytest

from saeft_jax.evaluation import browser, interpret
from saeft_jax.rendering.html import browser_data, render_html, thumbnail

F, K, N, CLASSES = 12, 3, 40, 4


def random_codes(rng) -> interpret.Codes:
    indices = np.stack([rng.choice(F, K, replace=False) for _ in range(N)])
    values = rng.uniform(0.0, 2.0, (N, K)).astype(np.float32)
    values[rng.random((N, K)) < 0.1] = 0.0  # ReLU zeros: held in the top-k, not firing
    values[rng.random((N, K)) < 0.1] *= -1  # codes without ReLU: in the code, not among the top activations
    return values, indices


@pytest.fixture
def setting():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, CLASSES, N)
    codes = {model: random_codes(rng) for model in ("zeroshot", "plain", "saeft")}
    other = {model: random_codes(rng) for model in ("zeroshot", "plain", "saeft")}  # a second dataset
    changes = {
        m: {
            "id": interpret.count_changes(codes["zeroshot"], codes[m], labels, F, CLASSES),
            "shift": interpret.count_changes(other["zeroshot"], other[m], labels, F, CLASSES),
        }
        for m in ("plain", "saeft")
    }
    return codes, other, changes, labels


def dense(codes: interpret.Codes) -> np.ndarray:
    out = np.zeros((N, F))
    for row in range(N):
        out[row, codes[1][row]] = codes[0][row]
    return out


def test_cards_count_what_each_method_added_and_removed_per_dataset_and_class(setting):
    codes, other, changes, labels = setting
    features, changed = browser.changed_features(changes, limit=5)
    total = sum(
        ((dense(c[m]) != 0) != (dense(c["zeroshot"]) != 0)).sum(0) for c in (codes, other) for m in ("plain", "saeft")
    )
    assert changed == np.count_nonzero(total)
    assert [total[f] for f in features] == sorted(total, reverse=True)[:5]  # the most changed first
    names = {f: [("name", 0.5)] for f in features}
    cards = browser.feature_cards(
        codes, changes, "id", [f"c{i}" for i in range(CLASSES)], names, features, dict_size=F, images=3
    )
    for card in cards:
        f = card["feature"]
        zeroshot = {"id": dense(codes["zeroshot"])[:, f], "shift": dense(other["zeroshot"])[:, f]}
        for m in ("plain", "saeft"):
            tuned = {"id": dense(codes[m])[:, f], "shift": dense(other[m])[:, f]}
            added = {d: (tuned[d] != 0) & (zeroshot[d] == 0) for d in tuned}
            removed = {d: (zeroshot[d] != 0) & (tuned[d] == 0) for d in tuned}
            entry = card["methods"][m]
            assert entry["by_dataset"] == {d: [int(added[d].sum()), int(removed[d].sum())] for d in tuned}
            assert (entry["added"], entry["removed"]) == (
                sum(a.sum() for a in added.values()),
                sum(r.sum() for r in removed.values()),
            )
            by_class = {
                f"c{c}": [int(added["id"][labels == c].sum()), int(removed["id"][labels == c].sum())]
                for c in range(CLASSES)
            }
            assert {name: [a, r] for name, a, r in entry["by_class"]} == {c: v for c, v in by_class.items() if sum(v)}
        scale = max(dense(c)[:, f].max() for c in codes.values())
        for model, view in card["models"].items():
            activation = dense(codes[model])[:, f]
            fires = activation > 0
            assert view["density"] == pytest.approx((activation != 0).mean())
            assert view["rows"] == list(np.argsort(-activation, kind="stable")[: min(3, fires.sum())])
            expected = np.histogram(activation[fires], bins=browser.BINS, range=(0, scale))[0]
            assert view["histogram"] == expected.tolist() and view["scale"] == pytest.approx(scale)


def test_the_page_is_self_contained_escaped_and_lists_every_card(setting, tmp_path):
    from PIL import Image

    codes, _, changes, _ = setting
    features, changed = browser.changed_features(changes, limit=100)
    classes = ["<b>cat</b>", "dog", "a & b", "d"]
    cards = browser.feature_cards(
        codes, changes, "id", classes, {f: [("<i>x</i>", 0.5)] for f in features}, features, dict_size=F, images=2
    )
    for view in (v for card in cards for v in card["models"].values()):
        view["examples"] = view.pop("rows")
    images = {e: thumbnail(np.full((8, 8, 3), e, np.uint8)) for e in range(N)}
    Image.new("RGB", (10, 10), "red").save(tmp_path / "wise.png")
    text = "# Title\n\n| a | b |\n|---|---|\n| <img src=x onerror=alert(1)> | 2 |\n\n![sweep](wise.png)\n"
    page = render_html(
        "report",
        text,
        tmp_path,
        [browser_data("main", {"sha256": "x"}, "id", ["plain", "saeft"], changed, cards, images)],
    )
    assert "<table>" in page and "<td>2</td>" in page  # the Markdown tables, as HTML
    assert "onerror" not in page.replace("&lt;img src=x onerror=alert(1)&gt;", "")  # raw HTML in Markdown: text
    sources = re.findall(r'src="([^"]*)"', page) + re.findall(r"url\(([^)]*)\)", page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)  # nothing to fetch
    assert not re.search(r'(href|src)="(https?:|//|\w+\.(png|js|css))', page)
    shown = [e for card in cards for view in card["models"].values() for e in view["examples"]]
    assert page.count('class="thumb x0-') == len(shown)  # every image a card shows ...
    for example in set(shown):  # ... is in the page once
        assert page.count(f".x0-{example}{{background-image:") == 1
    assert page.count('<article class="card"') == changed == len(features)
    assert "<b>cat</b>" not in page and html.escape("<b>cat</b>") in page and "<i>x</i>" not in page
    for f in features:
        assert f'id="b0-feature-{f}"' in page
    linked = set(map(int, re.findall(r'href="#b0-feature-(\d+)"', page)))  # the per-class view points at cards
    assert linked and linked <= set(features)


def test_cards_show_the_measured_effects_and_their_cost_for_robustness(setting, tmp_path):
    """Each measured change appears on its feature's card with its effect per dataset and its mean
    over the shifts; a card's robustness cost (what the browser's "most costly" sort reads) is the
    largest such mean of the method (or of any method), and unmeasured cards have none."""
    import json

    codes, _, changes, _ = setting
    features, changed = browser.changed_features(changes, limit=100)
    effects = {
        "plain": [
            {
                "feature": features[0],
                "change": "added",
                "images": {"id": 3, "a": 1, "b": 0},
                "effects": {"id": -0.25, "a": 0.5, "b": 0.25},
            },
            {
                "feature": features[0],
                "change": "removed",
                "images": {"id": 2, "a": 1, "b": 1},
                "effects": {"id": 0.0, "a": 0.125, "b": -0.25},
            },
        ],
        "saeft": [
            {
                "feature": features[1],
                "change": "removed",
                "images": {"id": 1, "a": 0, "b": 1},
                "effects": {"id": 0.125, "a": -0.5, "b": 0.0},
            }
        ],
    }
    cards = browser.feature_cards(
        codes,
        changes,
        "id",
        [f"c{i}" for i in range(CLASSES)],
        {f: [("x", 0.5)] for f in features},
        features,
        dict_size=F,
        images=2,
        effects=effects,
        ood=["a", "b"],
    )
    by_feature = {card["feature"]: card for card in cards}
    assert by_feature[features[0]]["methods"]["plain"]["effects"] == {
        "added": {"by_dataset": {"id": -0.25, "a": 0.5, "b": 0.25}, "avg_ood": 0.375},
        "removed": {"by_dataset": {"id": 0.0, "a": 0.125, "b": -0.25}, "avg_ood": -0.0625},
    }
    assert "effects" not in by_feature[features[0]]["methods"]["saeft"]
    assert by_feature[features[1]]["methods"]["saeft"]["effects"] == {
        "removed": {"by_dataset": {"id": 0.125, "a": -0.5, "b": 0.0}, "avg_ood": -0.25}
    }
    for view in (v for card in cards for v in card["models"].values()):
        view["examples"] = view.pop("rows")
    page = render_html(
        "report",
        "# r\n",
        tmp_path,
        [
            browser_data(
                "main",
                {},
                "id",
                ["plain", "saeft"],
                changed,
                cards,
                {e: thumbnail(np.zeros((4, 4), np.uint8)) for e in range(N)},
            )
        ],
    )
    infos = {
        info["feature"]: info
        for info in (json.loads(html.unescape(m)) for m in re.findall(r'data-info="([^"]*)"', page))
    }
    assert infos[features[0]]["cost"] == {"": 0.375, "plain": 0.375}
    assert infos[features[1]]["cost"] == {"": -0.25, "saeft": -0.25}
    assert all(infos[f]["cost"] == {} for f in features[2:])
    assert '<option value="cost">most costly for robustness</option>' in page
    assert "<td><b>+37.5</b></td>" in page and "<td>-50.0</td>" in page  # the card's table, in points


def test_a_thumbnail_keeps_small_images_sharp_and_shrinks_large_ones():
    import base64
    import io

    from PIL import Image

    def decoded(uri: str) -> Image.Image:
        return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))

    small = np.zeros((12, 12, 3), np.uint8)
    small[:6] = 255
    picture = decoded(thumbnail(small))
    assert picture.size == (72, 72) and set(np.unique(np.asarray(picture))) == {0, 255}
    assert decoded(thumbnail(np.zeros((300, 150), np.uint8))).size == (36, 72)


def test_an_installed_package_renders_the_page_from_its_templates(tmp_path):
    """report.html's markup, style and script are package data: a wheel built from the source holds
    the templates, and the package installed from it (not this checkout) renders the same page."""
    import os
    import pathlib
    import shutil
    import subprocess
    import sys
    import zipfile

    root = pathlib.Path(__file__).resolve().parents[1]
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(root / "saeft_jax", source / "saeft_jax", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", source], check=True)
    wheel = next((tmp_path / "dist").glob("*.whl"))
    templates = {n for n in zipfile.ZipFile(wheel).namelist() if "/templates/" in n}
    assert templates == {"saeft_jax/rendering/templates/report.html", "saeft_jax/rendering/templates/browser.html"}
    subprocess.run([*pip, "install", "--no-deps", "--target", tmp_path / "site", wheel], check=True)
    page = "h.render_html('t', '# x', '', [])"
    code = f"import sys, saeft_jax.rendering.html as h; print(h.__file__); sys.stdout.write({page})"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, check=True
    )
    installed, page = out.stdout.split("\n", 1)
    assert installed.startswith(str(tmp_path / "site"))
    assert page == render_html("t", "# x", tmp_path, []) and page.startswith("<!DOCTYPE html>")
    assert "<h1>x</h1>" in page and ".saeft-report .thumb" in page and "controls.hidden = false" in page


def test_the_renderers_import_neither_jax_nor_what_makes_the_report():
    """Rendering reads JSON only: importing it loads no JAX, stage, evaluation or method module."""
    import os
    import pathlib
    import subprocess
    import sys

    code = (
        "import sys, saeft_jax.rendering.markdown, saeft_jax.rendering.html, saeft_jax.rendering.figures; "
        "print(sys.modules['saeft_jax'].__file__); print(' '.join(sorted(sys.modules)))"
    )
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}  # this checkout's package
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    package, modules = out.stdout.split("\n", 1)
    loaded = set(modules.split())
    assert package == str(root / "saeft_jax" / "__init__.py")
    assert "saeft_jax.rendering.html" in loaded and "jax" not in loaded
    above = ("saeft_jax.stages", "saeft_jax.evaluation", "saeft_jax.methods", "saeft_jax.config", "saeft_jax.pipeline")
    assert not [m for m in loaded if m.startswith(above)]
