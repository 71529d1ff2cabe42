"""Every command the getting-started page, the Python client page and the README show, run as written.

One real server (``transfigure serve``, the command ``make serve`` runs) on the shipped models in
``models/``, on a free loopback port; each page's ``curl`` block runs in bash and each Python block
runs in this interpreter, in a folder with the ``photo.jpg`` and ``small.png`` the page speaks of,
with only the address changed. Then the files they wrote are checked.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models import ModelCard
from tests.server_utils import Server, free_port, server_env

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
PAGES = {"getting-started": DOCS / "getting-started.md", "python-client": DOCS / "python-client.md",
         "README": REPO / "README.md"}  # fmt: skip
ADDRESS = "http://127.0.0.1:3000"  # what the pages show
PHOTO = REPO / "tests" / "fixtures" / "yosemite" / "testA" / "2010-09-07 12:23:20.jpg"
SMALL = REPO / "tests" / "fixtures" / "sr" / "head.png"

pytestmark = pytest.mark.integration


def _blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), re.S)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``transfigure serve --host 127.0.0.1 --port P`` on the shipped zoo."""
    work = tmp_path_factory.mktemp("getting_started_server")
    port = free_port()
    log_path = work / "server.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO, env=server_env(REPO / "models", work / "bentoml_home"), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    srv = Server(url=f"http://127.0.0.1:{port}", proc=proc, log_path=log_path, _log=log)
    try:
        srv.wait_ready(180)
        yield srv.url
    finally:
        srv.stop()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    shutil.copy(PHOTO, tmp_path / "photo.jpg")
    shutil.copy(SMALL, tmp_path / "small.png")
    return tmp_path


def test_make_serve_runs_the_command_the_server_here_runs() -> None:
    """`make serve` is `transfigure serve --host 127.0.0.1 --port 3000` once .venv is there."""
    assert any("make serve" in b for b in _blocks(PAGES["getting-started"], "bash"))
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", "serve"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1].endswith("/transfigure serve --host 127.0.0.1 --port 3000")


def _check_outputs(folder: Path, winter: Path, cats: Path, big: Path) -> None:
    photo = Image.open(folder / "photo.jpg")
    out = Image.open(winter)
    assert out.size == photo.size
    diff = np.abs(np.asarray(out.convert("RGB"), float) - np.asarray(photo.convert("RGB"), float)).mean()
    assert diff > 1.0, "the translation returned the photo unchanged"
    side = ModelCard.load(REPO / "models" / "quickdraw_cgan").output_size
    grid = Image.open(cats)
    assert grid.format == "PNG" and grid.width == grid.height and 4 * side <= grid.width <= 4 * side + 10
    small = Image.open(folder / "small.png")
    assert Image.open(big).size == (4 * small.width, 4 * small.height)


@pytest.mark.parametrize("page", ["getting-started", "README"])
def test_the_curl_calls_as_shown(server: str, folder: Path, page: str) -> None:
    blocks = [b for b in _blocks(PAGES[page], "bash") if "curl" in b]
    calls = [line for b in blocks for line in b.splitlines() if line.startswith("curl")]
    assert {re.search(r"/(translate|sample|upscale)\b", c).group(1) for c in calls if "/models" not in c} == {  # type: ignore[union-attr]
        "translate", "sample", "upscale"
    }  # fmt: skip
    for block in blocks:
        assert ADDRESS in block
        r = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.replace(ADDRESS, server)],
            cwd=folder, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert r.returncode == 0, f"{page}: exit {r.returncode}\n{block}\n{r.stderr}"
    assert Image.open(folder / "winter.jpg").format == "JPEG"
    _check_outputs(folder, folder / "winter.jpg", folder / "cats.png", folder / "big.png")
    if (folder / "models.json").exists():
        listing = json.loads((folder / "models.json").read_text())
        names = {m["name"] for m in listing["models"]}
        assert names == {p.parent.name for p in (REPO / "models").glob("*/card.json")}


@pytest.mark.parametrize("page", ["getting-started", "python-client", "README"])
def test_the_python_client_calls_as_shown(
    server: str, folder: Path, page: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (block,) = _blocks(PAGES[page], "python")
    assert ADDRESS in block
    monkeypatch.chdir(folder)
    namespace: dict[str, object] = {}
    exec(compile(block.replace(ADDRESS, server), f"<{page}>", "exec"), namespace)
    winter, cats, big = (Path(namespace[k]) for k in ("winter", "cats", "big"))  # type: ignore[arg-type]
    _check_outputs(folder, winter, cats, big)
    assert str(winter) in capsys.readouterr().out


def test_the_same_seed_gives_the_same_drawings(server: str, folder: Path) -> None:
    """What the getting-started page says of `seed`; and an error comes back as the server's message."""
    import bentoml
    from bentoml.exceptions import BentoMLException

    with bentoml.SyncHTTPClient(server) as client:
        first = Path(client.sample(model="quickdraw_cgan", label="cat", n=16, seed=7)).read_bytes()
        again = Path(client.sample(model="quickdraw_cgan", label="cat", n=16, seed=7)).read_bytes()
        other = Path(client.sample(model="quickdraw_cgan", label="cat", n=16, seed=8)).read_bytes()
        assert first == again != other
        with pytest.raises(BentoMLException, match="unknown model 'nope'"):
            client.translate(image=folder / "photo.jpg", model="nope")
