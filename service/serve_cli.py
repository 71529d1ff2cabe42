"""Start the HTTP service (``bentoml serve service.service:Transfigure``) on the models in the zoo.

Prints which models it found (and refuses to start, naming the file, if a card or its ONNX file is
bad, unless --allow-missing), then runs ``bentoml serve`` as a child process and forwards SIGTERM /
SIGINT to it so that Kubernetes' stop gives in-flight requests a clean drain.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from models import CardError, ModelCard
from service.config import SettingsError, load_settings
from service.providers import plan_from_settings
from service.zoo import check_cards

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICE = "service.service:Transfigure"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host",
        default=os.environ.get("BENTOML_HOST", "127.0.0.1"),
        help="bind address (default: 127.0.0.1)",
    )
    p.add_argument(
        "--port", type=int, default=int(os.environ.get("BENTOML_PORT", "3000")), help="port (default: 3000)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: $TRANSFIGURE_WORKERS or 1); ORT threads are split between them",
    )
    p.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="zoo folder (default: $TRANSFIGURE_MODELS_DIR or models/)",
    )
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="start even if a model's card or file is bad, listing it as unavailable (TRANSFIGURE_STRICT=0)",
    )
    p.add_argument("--check", action="store_true", help="only check the zoo and print what would be served")


def check_zoo(root: Path, strict: bool) -> tuple[list[ModelCard], list[str]]:
    """Cards that validate and whose ONNX file matches its sha256, plus the problems found."""
    try:
        cards, problems = check_cards(root, strict=strict)
    except CardError as e:
        return [], [str(e)]
    return cards, list(problems.values())


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    overrides: dict[str, object] = {}
    if args.models_dir is not None:
        env["TRANSFIGURE_MODELS_DIR"] = str(args.models_dir.resolve())
        overrides["models_dir"] = args.models_dir
    if args.workers is not None:
        if args.workers < 1:
            print("transfigure serve: --workers must be at least 1", file=sys.stderr)
            return 2
        env["TRANSFIGURE_WORKERS"] = str(args.workers)
        overrides["workers"] = args.workers
    if args.allow_missing:
        env["TRANSFIGURE_STRICT"] = "0"
        overrides["strict"] = False
    try:  # the service reads the same settings at start-up: say what is wrong before starting it
        settings = load_settings(**overrides)
        plan = plan_from_settings(settings, announce=False)  # e.g. an explicit `cuda` without CUDA
    except SettingsError as e:
        print(f"transfigure serve: {e}", file=sys.stderr)
        return 2
    strict, root = settings.strict, settings.models_dir

    cards, problems = check_zoo(root, strict)
    print(f"zoo: {root}")
    print(f"onnxruntime providers: {', '.join(plan.providers)} ({settings.providers})")
    for card in cards:
        extra = (
            f" x{card.scale}"
            if card.scale
            else (f" classes={','.join(card.classes)}" if card.classes else "")
        )
        print(f"  {card.name:<24} {card.task:<9} {card.method}{extra}")
    if not cards and not problems:
        print(
            "  no models found: the service starts, but every model endpoint answers 400 until one is exported"
        )
    for msg in problems:
        print(f"  unusable: {msg}", file=sys.stderr)
    if problems and strict:
        print("refusing to start; fix or remove the model, or pass --allow-missing", file=sys.stderr)
        return 2
    if args.check:
        return 0

    cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", args.host, "--port", str(args.port)]
    cmd += ["--working-dir", str(REPO_ROOT)]
    print(
        f"serving on http://{args.host}:{args.port}  (docs: /docs.json, health: /livez /readyz)", flush=True
    )
    child = subprocess.Popen(cmd, env=env)

    def forward(signum: int, _frame: FrameType | None) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:  # SIGINT already forwarded; keep waiting for the drain
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
