"""report.html: the Markdown report as one self-contained page (pictures inline) with a feature
browser: a card per changed SAE feature, filters and sorting (by the measured cost of a change
for robustness too), and a per-class view.

Everything is in the file (no network, no neighbouring files), so it reads the same from a local
workdir and after a download from a bucket. The results, the cards and the per-class view are
plain HTML and readable without JavaScript; the script only filters and sorts the cards. Each
thumbnail is in the page once (a CSS class), however many cards show it; raw HTML in the
Markdown (a class name, a concept) is shown as text, never run. The page's markup, style and
script, and the browser's frame, are templates shipped with the package (`templates/`, filled by
`string.Template`); the cards are built here.
"""

from __future__ import annotations

import base64
import functools
import html
import importlib.resources
import io
import json
import re
import string
from collections.abc import Mapping
from typing import Any

import markdown
import numpy as np
from PIL import Image

from saeft_jax import storage

THUMBNAIL = 72  # pixels on the longer side


@functools.cache
def template(name: str) -> string.Template:
    """The template `templates/<name>` of this package (read through importlib.resources, so an
    installed wheel finds it too)."""
    return string.Template(importlib.resources.files(__package__).joinpath("templates", name).read_text("utf-8"))


@functools.cache
def _fragment(name: str) -> string.Template:
    """A template of a piece of the page, its line breaks removed (they only keep the file readable)."""
    return string.Template(template(name).template.replace("\n", ""))


def thumbnail(image: np.ndarray) -> str:
    """An image array as a small inline picture (a data URI): small images (the demo's digits)
    enlarged as PNG with their pixels kept sharp, larger ones shrunk to a JPEG."""
    picture = Image.fromarray(np.asarray(image, np.uint8).squeeze())
    factor = THUMBNAIL // max(picture.size)
    buffer = io.BytesIO()
    if factor > 1:
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)
        picture.save(buffer, format="PNG", optimize=True)
        kind = "png"
    else:
        picture.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.BILINEAR)
        picture.convert("RGB").save(buffer, format="JPEG", quality=85)
        kind = "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode()


def render_html(title: str, markdown_text: str, directory, browsers: list[dict[str, Any]]) -> str:
    """The page: `markdown_text` (a report.md whose pictures are files in `directory`) rendered with
    the pictures inline, then one feature browser per entry of `browsers` (`browser_data`)."""
    converter = markdown.Markdown(extensions=["tables"])
    converter.preprocessors.deregister("html_block")  # raw HTML stays text, and links in names stay text
    for pattern in ("html", "link", "reference", "short_reference", "autolink", "automail"):
        converter.inlinePatterns.deregister(pattern)
    body = converter.convert(markdown_text)
    body = re.sub(r'src="([^"/:]+\.png)"', lambda m: f'src="{_inline(directory, m.group(1))}"', body)
    sections = [_browser(b, index) for index, b in enumerate(browsers)]
    thumbnails = "".join(
        f".x{index}-{example}{{background-image:url({uri})}}"
        for index, b in enumerate(browsers)
        for example, uri in b["images"].items()
    )
    return template("report.html").substitute(
        title=html.escape(title), thumbnails=thumbnails, body=body, sections="".join(sections)
    )


def _inline(directory, file: str) -> str:
    return "data:image/png;base64," + base64.b64encode((storage.path(directory) / file).read_bytes()).decode()


def browser_data(
    sae: str,
    sae_digest: Any,
    dataset: str,
    methods: list[str],
    changed: int,
    cards: list[dict[str, Any]],
    images: Mapping[int, str],
) -> dict[str, Any]:
    """What a feature browser shows, as JSON (report/browser.json, also read by compare);
    `changed` counts every changed feature, of which `cards` may show the most changed only, and
    `images` maps the examples the cards show to their thumbnails."""
    return {
        "sae": sae,
        "sae_digest": sae_digest,
        "dataset": dataset,
        "methods": methods,
        "changed": changed,
        "cards": cards,
        "images": {str(row): uri for row, uri in images.items()},
    }


def _browser(data: dict[str, Any], index: int) -> str:
    cards, methods = data["cards"], data["methods"]
    classes = sorted({row[0] for card in cards for m in card["methods"].values() for row in m["by_class"]})
    datasets = sorted({d for card in cards for m in card["methods"].values() for d in m["by_dataset"]})
    more = "raise <code>report.browser_features</code> for more"
    shown = (
        f"all {len(cards)}"
        if len(cards) == data["changed"]
        else f"the {len(cards)} most changed of each run ({more})"
        if data["changed"] is None
        else f"the {len(cards)} most changed of {data['changed']} ({more})"
    )
    runs = f" (runs {', '.join(map(html.escape, data['runs']))})" if data.get("runs") else ""
    options = lambda values: "".join(f'<option value="{html.escape(v)}">{html.escape(v)}</option>' for v in values)
    return _fragment("browser.html").substitute(
        index=index,
        sae=html.escape(data["sae"]),
        dataset=html.escape(data["dataset"]),
        runs=runs,
        shown=shown,
        methods=options(methods),
        classes=options(classes),
        datasets=options(datasets),
        cards="".join(_card(card, index, methods) for card in cards),
        per_class=_per_class(cards, methods, index),
    )


def _card(card: dict[str, Any], index: int, methods: list[str]) -> str:
    f, per_method = card["feature"], card["methods"]
    count = {m: c["added"] + c["removed"] for m, c in per_method.items()}
    info = {
        "feature": f,
        "name": card["names"][0][0] if card["names"] else "",
        "names": " ".join(name for name, _ in card["names"]).lower(),
        "count": {"": sum(count.values()), **count},
        "density": card["models"]["zeroshot"]["density"],
        "classes": {m: [row[0] for row in c["by_class"]] for m, c in per_method.items()},
        "datasets": {m: [d for d, (a, r) in c["by_dataset"].items() if a + r] for m, c in per_method.items()},
        "cost": robustness_cost(per_method),
    }
    names = ", ".join(f"{html.escape(name)} <small>({similarity:.2f})</small>" for name, similarity in card["names"])
    datasets = list(next(iter(per_method.values()))["by_dataset"]) if per_method else []
    head = "".join(f"<th>{html.escape(m)}</th>" for m in per_method)
    rows = "".join(
        f"<tr><td>{html.escape(d)}</td>"
        + "".join(f"<td>+{c['by_dataset'][d][0]} / -{c['by_dataset'][d][1]}</td>" for c in per_method.values())
        + "</tr>"
        for d in datasets
    )
    total = "".join(f"<td><b>+{c['added']} / -{c['removed']}</b></td>" for c in per_method.values())
    models = "".join(_model(name, view, index) for name, view in card["models"].items())
    effects = _effects(per_method)
    by_class = "".join(
        f"<tr><td>{html.escape(m)}</td><td>"
        + ", ".join(f"{html.escape(c)} +{a}/-{r}" for c, a, r in per_method[m]["by_class"])
        + "</td></tr>"
        for m in methods
        if m in per_method and per_method[m]["by_class"]
    )
    return (
        f'<article class="card" id="b{index}-feature-{f}" data-info="{html.escape(json.dumps(info))}">'
        f'<h3>#{f} <span class="names">{names}</span></h3>'
        f'<div class="scroll"><table class="counts"><tr><th>images gained / lost</th>{head}</tr>{rows}'
        f"<tr><td><b>all datasets</b></td>{total}</tr></table></div>{effects}"
        f'<div class="models">{models}</div>'
        f"<details><summary>per class</summary><table>{by_class}</table></details></article>"
    )


def robustness_cost(per_method: dict[str, Any]) -> dict[str, float]:
    """Per method whose change of the feature was measured (and "" for any): the most average OOD
    accuracy that undoing one of its changes of the feature gains (negative: undoing costs)."""
    cost = {
        m: max(e["avg_ood"] for e in c["effects"].values())
        for m, c in per_method.items()
        if any(e["avg_ood"] is not None for e in c.get("effects", {}).values())
    }
    return {"": max(cost.values()), **cost} if cost else {}


def _effects(per_method: dict[str, Any]) -> str:
    """The card's table of measured effects: accuracy change, in points, when a method's change of the
    feature is undone, per dataset and averaged over the shifts."""
    rows = [(m, kind, e) for m, c in per_method.items() for kind, e in c.get("effects", {}).items()]
    if not rows:
        return ""
    datasets = list(rows[0][2]["by_dataset"])
    head = "".join(f"<th>{html.escape(d)}</th>" for d in datasets)
    body = "".join(
        f"<tr><td>{html.escape(m)}: {kind}</td>"
        + "".join(f"<td>{100 * e['by_dataset'][d]:+.1f}</td>" for d in datasets)
        + (f"<td><b>{100 * e['avg_ood']:+.1f}</b></td>" if e["avg_ood"] is not None else "<td>n/a</td>")
        + "</tr>"
        for m, kind, e in rows
    )
    return (
        f'<div class="scroll"><table class="effects"><tr><th>undone: accuracy change (points)</th>{head}'
        f"<th>average OOD</th></tr>{body}</table></div>"
    )


def _model(name: str, view: dict[str, Any], index: int) -> str:
    label = "zero-shot" if name == "zeroshot" else name
    pictures = "".join(
        f'<span class="thumb x{index}-{e}" role="img" aria-label="example {e}" title="example {e}"></span>'
        for e in view["examples"]
    )
    return (
        f'<figure class="model" data-model="{html.escape(name)}"><figcaption>{html.escape(label)}: fires on '
        f"{100 * view['density']:.1f}%</figcaption>{_histogram(view['histogram'], view['scale'])}"
        f'<div class="images">{pictures or "<em>never fires</em>"}</div></figure>'
    )


def _histogram(counts: list[int], scale: float) -> str:
    """An inline SVG bar chart of activation counts over equal bins of [0, scale]."""
    top, width, height = max(max(counts), 1), 120, 28
    bar = width / len(counts)
    bars = "".join(
        f'<rect x="{i * bar:.1f}" y="{height - height * c / top:.1f}" width="{bar - 1:.1f}" '
        f'height="{height * c / top:.1f}"><title>{c}</title></rect>'
        for i, c in enumerate(counts)
    )
    return (
        f'<svg class="histogram" width="{width}" height="{height}" role="img" aria-label="activations from 0 to '
        f'{scale:.3g}">{bars}</svg>'
    )


def _per_class(cards: list[dict[str, Any]], methods: list[str], index: int) -> str:
    gained: dict[tuple[str, str], list[tuple[int, int]]] = {}
    lost: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for card in cards:
        for m, c in card["methods"].items():
            for name, added, removed in c["by_class"]:
                if added:
                    gained.setdefault((name, m), []).append((added, card["feature"]))
                if removed:
                    lost.setdefault((name, m), []).append((removed, card["feature"]))

    def links(entries: list[tuple[int, int]]) -> str:
        return ", ".join(
            f'<a href="#b{index}-feature-{f}">#{f}</a>&nbsp;({n})' for n, f in sorted(entries, reverse=True)[:12]
        )

    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(m)}</td><td>{links(gained.get((name, m), []))}"
        f"</td><td>{links(lost.get((name, m), []))}</td></tr>"
        for name in sorted({key[0] for key in (*gained, *lost)})
        for m in methods
        if (name, m) in gained or (name, m) in lost
    )
    return (
        f'<h2 id="classes-{index}">Per class</h2><p>For each class and method, the features gained and lost '
        f'most often on its images (images in brackets; at most 12 each).</p><table class="per-class">'
        f"<tr><th>class</th><th>method</th><th>gained</th><th>lost</th></tr>{rows}</table>"
    )
