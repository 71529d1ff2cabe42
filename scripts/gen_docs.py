"""Write the documentation pages that are generated from the code, never copied by hand.

* ``docs/models/index.md`` and one ``docs/models/<name>.md`` per shipped model, from its ``card.json``;
  the README's shipped-models table (between its ``models-table`` markers) from the same cards;
* ``docs/reference/configuration.md`` from :class:`service.config.Settings`;
* ``docs/reference/cli.md`` from the ``transfigure`` argument parsers.

``python scripts/gen_docs.py`` (``make docs-gen``) rewrites them; ``--check`` only lists the stale ones
and exits 1 if there are any (``tests/test_docs.py`` does the same check).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the project's packages
    sys.path.insert(0, str(ROOT))

from models import ModelCard, card_paths  # noqa: E402
from models.card import BarCriterion  # noqa: E402

DOCS = ROOT / "docs"
README = ROOT / "README.md"
MODELS_DOCS = DOCS / "models"
TABLE_START = "<!-- models-table:start (generated from the cards by `make docs-gen`) -->"
TABLE_END = "<!-- models-table:end -->"
REGENERATE = "make docs-gen"


def _banner(source: str) -> str:
    return f"<!-- Generated from {source} by scripts/gen_docs.py; do not edit: run `{REGENERATE}`. -->\n\n"


def _num(v: float | None) -> str:
    if v is None:
        return "not measured"
    if float(v).is_integer() and abs(v) < 1e15:
        return f"{int(v):,}"
    return f"{v:.4g}"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _prose(text: object) -> str:
    """A table cell of prose: ``<`` and ``>`` shown as written, not read as HTML."""
    return _cell(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _criterion(c: BarCriterion) -> str:
    return f"{c.metric} {_num(c.value)} {c.comparison} {_num(c.limit)}"


# -- the models ------------------------------------------------------------------------------------
def _cards() -> list[ModelCard]:
    return [ModelCard.load(p) for p in card_paths(ROOT / "models")]


def _verdict(card: ModelCard) -> str:
    if card.quality_bar is None:
        return "no bar recorded"
    if card.quality_bar.met:
        return "met"
    missed = [c.requirement for c in card.quality_bar.criteria if not c.met]
    return "**missed**: " + "; ".join(missed)


def _headline(card: ModelCard) -> str:
    metric, precision = card.shipped_headline()
    if metric is None:
        return "—"
    return f"`{metric.name}` {_num(metric.value)} ({precision})"


def models_table(link: Callable[[str], str]) -> str:
    rows = [
        "| model | task | architecture | precision | headline metric as shipped | quality bar |",
        "|---|---|---|---|---|---|",
    ]
    for card in _cards():
        rows.append(
            f"| [`{card.name}`]({link(card.name)}) | {card.task} | {_prose(card.architecture)} | {card.precision} "
            f"| {_headline(card)} | {_cell(_verdict(card))} |"
        )
    return "\n".join(rows) + "\n"


def models_index() -> str:
    return (
        "# Shipped models\n\n"
        + _banner("models/*/card.json")
        + "Every model in `models/` with the headline metric of its file as shipped (the INT8 file's "
        "measurement for a model that ships INT8) and its verdict against its quality bar. Each page "
        "lists every metric with the command that measured it, the export's checks and the model's "
        "provenance. `transfigure models` prints the same list from the cards.\n\n"
        + models_table(lambda name: f"{name}.md")
    )


def _image_block(card: ModelCard) -> str:
    parts = []
    before_after = DOCS / f"before_after_{card.name}.jpg"
    if before_after.is_file():
        parts.append(f"![{card.name}: before and after](../before_after_{card.name}.jpg)\n")
        big = DOCS / f"before_after_{card.name}_1024.jpg"
        if big.is_file():
            parts.append(f"The first photo at 1024 px: [before_after_{card.name}_1024.jpg](../{big.name}).\n")
    if (ROOT / "models" / card.name / "samples.png").is_file():
        parts.append(
            f"Sample grid written by the export ([`models/{card.name}/samples.png`](samples/{card.name}.png)):\n"
        )
        parts.append(f"![{card.name}: samples](samples/{card.name}.png)\n")
    return "\n".join(parts)


def model_page(card: ModelCard) -> str:
    t = card.training
    onnx = ROOT / "models" / card.name / card.onnx_file
    size_mb = onnx.stat().st_size / 1e6 if onnx.is_file() else float("nan")
    lines = [f"# `{card.name}`\n", _banner(f"models/{card.name}/card.json"), f"{card.description}\n"]
    facts = [
        ("task", f"`{card.task}`"),
        ("recipe", f"`{card.method}`"),
        ("architecture", _prose(card.architecture)),
        ("parameters", _num(card.parameters)),
        ("MACs for one 256×256 input", _num(card.macs_256)),
        ("precision", card.precision),
        ("file", f"`models/{card.name}/{card.onnx_file}`, {size_mb:.1f} MB, opset {card.opset}"),
        ("sha256", f"`{card.sha256}`"),
    ]
    if card.input is not None:
        i = card.input
        facts.append(
            (
                "input",
                f"{i.channels} channels in [{i.range[0]:g}, {i.range[1]:g}], sides a multiple of {i.multiple_of}, "
                f"native size {i.native_size}",
            )
        )
    facts.append(
        ("output", f"{card.output.channels} channels in [{card.output.range[0]:g}, {card.output.range[1]:g}]")
    )
    if card.scale:
        facts.append(("scale", f"×{card.scale}"))
    if card.classes:
        facts.append(("classes", ", ".join(f"`{c}`" for c in card.classes)))
    if card.latent_dim:
        facts.append(("latent size, output size", f"{card.latent_dim}, {card.output_size} px"))
    facts.append(("headline metric as shipped", _headline(card)))
    lines.append("| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in facts) + "\n")
    images = _image_block(card)
    if images:
        lines.append(images)

    lines.append("## Quality bar\n")
    if card.quality_bar is None:
        lines.append("No quality bar is recorded in the card.\n")
    else:
        bar = card.quality_bar
        lines.append(f"{bar.description}: **{'met' if bar.met else 'missed'}**.\n")
        rows = ["| criterion | measured | verdict | related figures |", "|---|---|---|---|"]
        for c in bar.criteria:
            ctx = ", ".join(f"{k} {_num(v)}" for k, v in c.context.items()) or "—"
            rows.append(
                f"| {_prose(c.requirement)} | {_criterion(c)} | {'met' if c.met else 'missed'} | {ctx} |"
            )
        lines.append("\n".join(rows) + "\n")

    lines.append("## Metrics\n")
    if not card.metrics:
        lines.append("The card records no metrics.\n")
    else:
        commands: list[str] = []
        protocols: list[str] = []
        rows = ["| metric | value | split | protocol | command |", "|---|---|---|---|---|"]
        for m in card.metrics:
            if m.command not in commands:
                commands.append(m.command)
            if m.protocol not in protocols:
                protocols.append(m.protocol)
            rows.append(
                f"| `{m.name}` | {_num(m.value)} | {_prose(m.split)} | P{protocols.index(m.protocol) + 1} "
                f"| C{commands.index(m.command) + 1} |"
            )
        lines.append("\n".join(rows) + "\n")
        lines.append("Commands that measured them:\n")
        lines.append("\n".join(f"* C{i}: `{_cell(c)}`" for i, c in enumerate(commands, 1)) + "\n")
        lines.append("Protocols:\n")
        lines.append("\n".join(f"* P{i}: {_prose(p)}" for i, p in enumerate(protocols, 1)) + "\n")

    lines.append("## Export checks\n")
    if card.parity is not None:
        p = card.parity
        cases = "; ".join(
            f"batch {c.batch}" + (f" at {c.size[0]}×{c.size[1]}" if c.size else "") + f": {c.max_abs_err:.2e}"
            for c in p.cases
        )
        lines.append(
            f"* ONNX parity ({p.exporter} exporter, {p.weights} weights): {p.compared}; max abs error per "
            f"case {cases}; tolerance {p.tolerance:g}.\n"
        )
    if card.int8_gate is not None:
        g = card.int8_gate
        lines.append(f"* {g.summary()}. Command: `{_cell(g.command)}`\n")
    if card.parity is None and card.int8_gate is None:
        lines.append("The card records no export checks.\n")

    lines.append("## Provenance and licence\n")
    prov = [
        ("training data", _prose(t.dataset)),
        ("source", _prose(t.source)),
        ("licence of the training data", _prose(t.license)),
        ("splits", ", ".join(f"{k} {_num(v)}" for k, v in t.split_sizes.items()) or "—"),
        ("training", f"{_num(t.steps)} steps, {t.wall_time_s / 60:.0f} min on {_cell(t.hardware)}"),
        ("source commit", f"`{t.commit}`"),
    ]
    lines.append("| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in prov) + "\n")
    if t.pretrained_networks:
        lines.append(
            "Frozen pretrained networks that gave the training a learning signal (not part of the model):\n"
        )
        rows = ["| network | weights from | source | licence |", "|---|---|---|---|"]
        rows += [
            f"| {_prose(n.network)} | {_prose(n.package)} | {_prose(n.source)} | {_prose(n.license)} |"
            for n in t.pretrained_networks
        ]
        lines.append("\n".join(rows) + "\n")
    else:
        lines.append("No pretrained network was used in training.\n")
    lines.append("The recipe's settings as recorded (`training.recipe_config`):\n")
    lines.append("```json\n" + json.dumps(t.recipe_config, indent=2) + "\n```\n")
    if card.notes:
        lines.append("## Notes\n")
        lines.append(card.notes.strip() + "\n")
    return "\n".join(lines)


# -- configuration ---------------------------------------------------------------------------------
def configuration_page() -> str:
    from service.config import markdown_rows

    return (
        "# Configuration\n\n"
        + _banner("service/config.py (`Settings`)")
        + "The service and `transfigure batch` read their settings from the environment (in Kubernetes, "
        "a ConfigMap sets them). `service/config.py` defines them, one typed field each, and "
        "`python -m service.config` prints this table. Unset or empty variables mean the default. "
        "An invalid value stops the service at start-up (and `transfigure serve` / `transfigure batch` "
        "with exit code 2) with a message naming the variable.\n\n"
        "| variable | default | meaning |\n|---|---|---|\n" + "\n".join(markdown_rows()) + "\n"
    )


# -- the command line ------------------------------------------------------------------------------
def _commands() -> list[tuple[str, str]]:
    """(prog, module) of every ``transfigure`` subcommand, as ``training.cli.main`` builds them."""
    from training.cli import COMMANDS
    from training.recipes import recipe_module_path, recipe_names

    out = [(f"transfigure train {r}", recipe_module_path(r)) for r in recipe_names()]
    out += [(f"transfigure {name}", module) for name, (module, _) in COMMANDS.items()]
    return out


def _default(action: argparse.Action) -> str:
    if action.default in (None, argparse.SUPPRESS) or isinstance(action, argparse._StoreTrueAction):
        return ""
    if isinstance(action, argparse._StoreFalseAction):
        return ""
    value = action.default
    if value == "" or value == []:
        return ""
    if isinstance(value, list | tuple):
        value = " ".join(map(str, value))
    return f"`{value}`"


def _option(action: argparse.Action) -> str:
    if not action.option_strings:
        name = action.metavar or action.dest
        choices = f" {{{','.join(map(str, action.choices))}}}" if action.choices else ""
        return f"`{name}`{choices}"
    flags = ", ".join(action.option_strings)
    if action.nargs == 0:
        return f"`{flags}`"
    if action.choices:
        return f"`{flags}` {{{','.join(map(str, action.choices))}}}"
    metavar = action.metavar or action.dest.upper()
    if isinstance(metavar, tuple):
        metavar = " ".join(metavar)
    suffix = " ..." if action.nargs in ("+", "*") else ""
    return f"`{flags} {metavar}{suffix}`"


def cli_page() -> str:
    from training.cli import build_parser

    top = build_parser()
    subs = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    lines = [
        "# Command-line reference\n",
        _banner("the argument parsers of `transfigure` (training/cli.py and each command's module)"),
        "`transfigure` is installed with the package (`pip install -e '.[serve]'` for `serve`, `batch` "
        "and `models`; the `train` extra for `train`, `evaluate` and `export`). `transfigure COMMAND "
        "--help` prints the same options.\n",
        "| command | what it does |\n|---|---|",
    ]
    rows = []
    for action in subs._choices_actions:
        if action.dest == "train":
            from training.recipes import recipe_names

            recipes = ", ".join(f"[`{r}`](#{_anchor('transfigure train ' + r)})" for r in recipe_names())
            rows.append(f"| `transfigure train RECIPE` ({recipes}) | {action.help} |")
        else:
            rows.append(
                f"| [`transfigure {action.dest}`](#{_anchor('transfigure ' + action.dest)}) | {action.help} |"
            )
    lines.append("\n".join(rows) + "\n")
    for prog, module in _commands():
        mod = importlib.import_module(module)
        doc = (mod.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        parser = argparse.ArgumentParser(prog=prog, description=doc)
        mod.add_arguments(parser)
        lines.append(f"## {prog}\n")
        lines.append(doc + "\n")
        rows = ["| argument | meaning |", "|---|---|"]
        formatter = argparse.HelpFormatter(prog)
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            text = formatter._expand_help(action) if action.help else ""
            default = _default(action)
            if default and "default" not in text:
                text = f"{text} (default: {default})".strip()
            rows.append(f"| {_option(action)} | {_prose(text)} |")
        lines.append("\n".join(rows) + "\n")
    return "\n".join(lines)


def _anchor(title: str) -> str:
    """The anchor MkDocs gives a heading (the toc extension's default slugify)."""
    import re

    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", title).strip().lower())


# -- all of them -----------------------------------------------------------------------------------
def readme_with_table(text: str) -> str:
    if TABLE_START not in text or TABLE_END not in text:
        raise SystemExit(f"README.md has no {TABLE_START} ... {TABLE_END} block")
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    table = models_table(lambda name: f"docs/models/{name}.md")
    return f"{head}{TABLE_START}\n{table}{TABLE_END}{tail}"


def pages() -> dict[Path, str]:
    """Every generated file and its content."""
    out = {MODELS_DOCS / "index.md": models_index()}
    for card in _cards():
        out[MODELS_DOCS / f"{card.name}.md"] = model_page(card)
    out[DOCS / "reference" / "configuration.md"] = configuration_page()
    out[DOCS / "reference" / "cli.md"] = cli_page()
    out[README] = readme_with_table(README.read_text(encoding="utf-8"))
    return out


def stale() -> list[Path]:
    """Generated files whose content differs from what the code generates now, and leftover model pages."""
    want = pages()
    bad = [p for p, text in want.items() if not p.is_file() or p.read_text(encoding="utf-8") != text]
    bad += [p for p in sorted(MODELS_DOCS.glob("*.md")) if p not in want]
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--check", action="store_true", help="list stale generated pages; exit 1 if any")
    args = ap.parse_args(argv)
    if args.check:
        bad = stale()
        for p in bad:
            print(f"stale: {p.relative_to(ROOT)}")
        return 1 if bad else 0
    want = pages()
    for path, text in want.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    for path in sorted(MODELS_DOCS.glob("*.md")):
        if path not in want:
            path.unlink()
            print(f"removed {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
