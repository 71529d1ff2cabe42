"""The documentation: the site builds strictly, generated pages are current, the README is a front page."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scripts import gen_docs

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
MAX_README_LINES = 150


def _mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "--site-dir", str(site)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_generated_pages_are_current() -> None:
    """Model pages, the README's models table, the configuration table and the CLI reference."""
    stale = [str(p.relative_to(REPO)) for p in gen_docs.stale()]
    assert stale == [], f"generated pages are stale: {stale}; run `make docs-gen` (scripts/gen_docs.py)"


def test_every_shipped_model_has_its_page_in_the_site() -> None:
    names = sorted(p.parent.name for p in (REPO / "models").glob("*/card.json"))
    nav = (REPO / "mkdocs.yml").read_text()
    for name in names:
        assert (REPO / "docs" / "models" / f"{name}.md").is_file(), name
        assert f"models/{name}.md" in nav, f"mkdocs.yml's nav lacks models/{name}.md"


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict`: a broken link, a missing page or a stale anchor fails it."""
    r = _mkdocs_build(REPO / "mkdocs.yml", tmp_path / "site")
    assert r.returncode == 0, r.stdout + r.stderr
    site = tmp_path / "site"
    for page in ("index.html", "getting-started/index.html", "api/index.html", "models/photo2monet/index.html",
                 "reference/configuration/index.html", "reference/cli/index.html", "design/translators/index.html"):  # fmt: skip
        assert (site / page).is_file(), page
    assert (site / "models" / "samples" / "photo2monet.png").is_file()  # the grid from the model's folder
    # k8s/README.md is included into the Kubernetes page, not copied
    assert "Build the Bento and its image" in (site / "kubernetes" / "index.html").read_text()
    # nothing is loaded from outside the site: no web fonts, no CDN
    html = (site / "index.html").read_text()
    assert "fonts.googleapis" not in html and "fonts.gstatic" not in html


def test_a_broken_link_or_anchor_fails_the_strict_build(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(REPO / "docs", docs)
    with (docs / "index.md").open("a") as f:
        f.write("\n[gone](no-such-page.md) and [stale](api.md#no-such-anchor)\n")
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    config.update(docs_dir=str(docs), hooks=[str(REPO / "scripts" / "mkdocs_hooks.py")])
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    r = _mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "no-such-page.md" in out and "no-such-anchor" in out, out


def test_readme_is_a_front_page() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_README_LINES
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    commands = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    assert "make test" in commands and "make serve" in commands
    # the picture and every link into the repository point at files that exist
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (REPO / target).is_file(), f"README links to {target}, which does not exist"
    assert "docs/demo.png" in text


def test_the_readme_quickstart_is_the_getting_started_page() -> None:
    """The README's calls are those of the getting-started page, which tests/test_getting_started.py runs."""
    page = (REPO / "docs" / "getting-started.md").read_text()
    readme = README.read_text()
    for lang in ("bash", "python"):
        page_lines = {
            line for b in re.findall(rf"```{lang}\n(.*?)```", page, re.S) for line in b.splitlines()
        }
        for block in re.findall(rf"```{lang}\n(.*?)```", readme, re.S):
            if "make test" in block:
                continue
            missing = [line for line in block.splitlines() if line not in page_lines]
            assert missing == [], f"README lines not on the getting-started page: {missing}"


@pytest.mark.parametrize(
    "page", sorted(p.relative_to(REPO / "docs").as_posix() for p in (REPO / "docs").rglob("*.md"))
)
def test_docs_speak_of_the_product(page: str) -> None:
    """The documentation describes the software, not how it was made."""
    text = (REPO / "docs" / page).read_text().lower()
    for word in ("issue #", "the issue", "the brief"):
        assert word not in text, f"docs/{page} mentions {word!r}"


def test_the_readme_facts_about_the_make_targets_and_python() -> None:
    """What the README says of `make` and of Python, checked against the Makefile and pyproject."""
    text = README.read_text()

    def dry_run(*args: str) -> str:
        return subprocess.run(
            ["make", "--no-print-directory", "-n", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    assert "make serve HOST=0.0.0.0 PORT=8080" in text
    assert dry_run("serve", "HOST=0.0.0.0", "PORT=8080").rstrip().endswith("serve --host 0.0.0.0 --port 8080")
    assert "`make docs` serves the documentation site on http://127.0.0.1:8000" in text
    assert "mkdocs serve --dev-addr 127.0.0.1:8000" in dry_run("docs")
    assert "scripts/gen_docs.py" in dry_run("docs-gen")
    assert "ruff" in dry_run("lint") and "tests/benchmarks/run_all.py" in dry_run("bench")
    assert "-m pytest" in dry_run("test")
    requires = re.search(r'requires-python = ">=([\d.]+)"', (REPO / "pyproject.toml").read_text()).group(1)  # type: ignore[union-attr]
    assert f"Python ≥ {requires}" in text
