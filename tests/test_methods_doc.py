"""docs/methods.md is generated from the registry and current: every method, its options and metric keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from entrolab import catalogue
from entrolab.methods_doc import render_methods_markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"


def test_the_committed_page_is_the_generated_one():
    assert DOC.read_text() == render_methods_markdown(), "run: entrolab methods --markdown > docs/methods.md"


def test_every_method_option_and_metric_key_is_on_the_page():
    page = render_methods_markdown()
    for axis, entries in catalogue.entries().items():
        for e in entries:
            assert f"### `{e.name}` ({axis.replace('_', ' ')})" in page
            for key in e.metrics:
                assert f"`{key}`" in page
            if e.config is not None and dataclasses.is_dataclass(e.config):
                for f in dataclasses.fields(e.config):
                    assert f"| `{e.name}.{f.name}` |" in page, (e.name, f.name)
    assert "*Differences from the paper / code:*" in page and "| `ppo_clip.eps_high` | `0.2` |" in page
