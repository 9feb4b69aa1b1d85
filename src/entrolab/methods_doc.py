"""``docs/methods.md``, generated from the registry: every method with its axis, paper, equation, options and
defaults, metric keys and differences from the paper and code, so the catalogue documents itself.

    entrolab methods --markdown > docs/methods.md      # a test checks the committed page is current
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from typing import Any

from entrolab import catalogue
from entrolab.presets import AXIS_FIELDS, PRESET_PARTS
from entrolab.registry import Entry

SECTIONS = ("Args:", "Returns:", "Differences from the paper", "Example:")


def _sections(doc: str) -> dict[str, str]:
    """A method docstring cut at its section headings: summary, body (paper and equation), differences."""
    lines = textwrap.dedent(doc).strip().splitlines()
    out: dict[str, list[str]] = {"summary": lines[:1], "body": []}
    current = "body"
    for line in lines[1:]:
        head = next((s for s in SECTIONS if line.strip().startswith(s)), None)
        if head is not None:
            current = head
            out.setdefault(current, [])
            rest = line.split(":", 1)[1].strip() if ":" in line else ""
            if current == "Differences from the paper" and rest:
                out[current].append(rest)
            continue
        out.setdefault(current, []).append(line)
    return {k: textwrap.dedent("\n".join(v)).strip() for k, v in out.items()}


def _field_docs(config: type) -> dict[str, str]:
    """The string literal after each field of a config dataclass (its documentation)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(config)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, nxt in zip(body, [*body[1:], None], strict=True):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return "(required)"


def _one(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render_entry(e: Entry) -> str:
    doc = _sections(inspect.getdoc(e.fn) or "")
    title = f"### `{e.name}` ({e.axis.replace('_', ' ')})"
    lines = [title, "", doc.get("summary", "")]
    if e.reconstructed:
        lines += ["", "**Reconstructed** from the paper's abstract alone (no released code or full text)."]
    lines += ["", f"- Paper: {e.paper or 'none'}"]
    if e.needs:
        lines.append(f"- Needs: {', '.join(f'`{n}`' for n in e.needs)}")
    if e.metrics:
        lines.append(f"- Metric keys: {', '.join(f'`{k}`' for k in e.metrics)}")
    presets = sorted(name for name, p in PRESET_PARTS.items() if _uses(p.method, e))
    if presets:
        lines.append(f"- Presets: {', '.join(f'`{p}`' for p in presets)}")
    if doc.get("body"):
        lines += ["", "```", doc["body"], "```"]
    if e.config is not None and dataclasses.is_dataclass(e.config):
        docs = _field_docs(e.config)
        lines += ["", "| option | default | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(e.config):
            lines.append(f"| `{e.name}.{f.name}` | `{_default(f)!r}` | {_one(docs.get(f.name, ''))} |")
    diff = doc.get("Differences from the paper")
    if diff:
        lines += ["", f"*Differences from the paper / code:* {_one(diff)}"]
    return "\n".join(lines)


def _uses(method: dict[str, Any], e: Entry) -> bool:
    field = AXIS_FIELDS.get(e.axis)
    value = method.get(field, ()) if field else ()
    return e.name == value if isinstance(value, str) else e.name in value


def render_methods_markdown() -> str:
    """The whole page: an index per axis, then one section per method."""
    entries = catalogue.entries()
    out = [
        "# The method catalogue",
        "",
        "Generated from the registry by `entrolab methods --markdown` (do not edit by hand; a test checks it is",
        "current). Options are set as `--options method.field=value` (or `methods=` in the TRL and verl",
        "adapters); every default lives in the method's config dataclass.",
        "",
    ]
    for axis, es in entries.items():
        if es:
            out.append(f"- **{axis.replace('_', ' ')}**: " + ", ".join(f"`{e.name}`" for e in es))
    out += ["", "See [verl and TRL counterparts](#verl-and-trl-counterparts) for what each engine name is here."]
    for axis, es in entries.items():
        if not es:
            continue
        out += ["", f"## {axis.replace('_', ' ')}", ""]
        out += ["\n\n".join(render_entry(e) for e in es)]
    out += ["", render_engines_markdown()]
    return "\n".join(out).rstrip() + "\n"


def render_engines_markdown() -> str:
    """The table of ``entrolab.anchors``: every verl 0.9.1 / TRL 1.16 name, its counterpart or why it has none."""
    from entrolab.anchors import COUNTERPARTS, EXCLUSIONS

    out = [
        "## verl and TRL counterparts",
        "",
        "Every policy loss, advantage estimator and KL estimator verl 0.9.1 registers and every `loss_type` and",
        "related choice TRL 1.16's `GRPOConfig` accepts, with the entrolab methods and options that compute the same",
        "thing (parity-tested in the reference venv: `tests/test_parity_*.py`; `tests/test_engine_registries.py`",
        "reads the engines' registries and fails on a name missing here).",
        "",
        "| engine | kind | name | entrolab | options | note |",
        "|---|---|---|---|---|---|",
    ]
    for (engine, kind, name), c in COUNTERPARTS.items():
        methods = ", ".join(f"`{m}`" for m in c.methods)
        options = ", ".join(f"`{o}`" for o in c.options)
        out.append(f"| {engine} | {kind} | `{name}` | {methods} | {options} | {c.note} |")
    for (engine, kind, name), why in EXCLUSIONS.items():
        out.append(f"| {engine} | {kind} | `{name}` | none | | {why} |")
    return "\n".join(out) + "\n"


__all__ = ["render_engines_markdown", "render_entry", "render_methods_markdown"]
