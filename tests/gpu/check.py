"""The GPU path in one run on one NVIDIA GPU, from a fresh copy of the repository (about 5 minutes
once the packages are installed; sized for 8).

``tests/gpu/check.sh`` (``make gpu-check``) runs this with the system's Python; it imports only the
standard library and runs everything else as commands of the check's own Python:

1. **environment** — ``--python PY`` if given, else ``.venv/gpu`` (created on first use: the
   ``train`` and ``serve`` extras, then onnxruntime swapped for onnxruntime-gpu, which must not be
   installed beside it). It must have torch with CUDA, onnxruntime's CUDA provider and bentoml.
2. **train** — every recipe a few hundred steps on ``--device cuda`` (``--precision auto``: bf16
   where the GPU has it, else fp16 with the grad scaler; pix2pix once more in fp16) on the test
   fixtures in ``tests/fixtures`` with the test suite's tiny nets: steps/s per recipe.
3. **export** — each run to ONNX (fp32; the exporter's own parity check runs on the CPU).
4. **parity** — each exported file run by onnxruntime's CUDA provider and by its CPU provider on the
   same inputs; max |CUDA - CPU| must be at most ``--tolerance`` (1e-2, output units: outputs span
   [-1, 1] or [0, 1]; cuDNN's algorithms and TF32 differ from the CPU's sums). The shipped files
   too (INT8 QDQ ones included), reported, failing only above 0.25.
5. **latency** — the shipped models (``models/``, INT8 files included) and the exported ones in
   onnxruntime, median ms on CUDA and on the CPU.
6. **serve** — the shipped and exported models served through BentoML (``transfigure serve``) with
   ``TRANSFIGURE_PROVIDERS=cuda``, one request per endpoint and model (``/models`` must say
   ``cuda``), then the same with ``cpu``: served latency per model on GPU and CPU.

It prints one table and writes ``report.json`` into the work folder (default ``runs/gpu-check``).
``--dry-run`` prints the plan (every command and its environment) and runs nothing;
``--device cpu`` rehearses the whole check on the CPU (no GPU: CPU against CPU).
Exit status: 0 when every step passed, 1 otherwise, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
PROBE = REPO / "tests" / "gpu" / "probe.py"
DEFAULT_VENV = REPO / ".venv" / "gpu"
DEFAULT_WORK = REPO / "runs" / "gpu-check"
TOLERANCE = 1e-2
SHIPPED_TOLERANCE = 0.25  # INT8 files: a quantisation step rounded the other way moves a pixel by ~0.01-0.1
GPU_RUNTIME = "onnxruntime-gpu>=1.20"

# the test suite's tiny nets (tests/test_evaluate.py), known to train and export on the fixtures
RECIPES: dict[str, list[str]] = {
    "cyclegan": ["--data", str(FIXTURES / "yosemite"), "--size", "32", "--ngf", "4", "--ndf", "4",
                 "--blocks", "1", "--ema-decay", "0.9"],
    "pix2pix": ["--data", str(FIXTURES / "facades"), "--direction", "BtoA", "--size", "32", "--ngf", "4",
                "--ndf", "4"],
    "cgan": ["--data", str(FIXTURES / "quickdraw"), "--ngf", "8", "--ndf", "8", "--latent-dim", "8",
             "--embed-dim", "4", "--batch-size", "8"],
    "srgan": ["--data", str(FIXTURES / "sr"), "--num-feat", "4", "--num-conv", "1", "--lr-patch", "8",
              "--scale", "2", "--batch-size", "2"],
}  # fmt: skip
EXPORT_EXTRA = {"srgan": ["--data", str(FIXTURES / "sr")]}
EXTRA_RUNS = {"pix2pix-fp16": ("pix2pix", "fp16")}  # the grad scaler's path


@dataclass
class Step:
    """One command of the check: what it runs, with which environment, and its table row."""

    group: str  # environment | train | export | parity | latency | serve
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    timeout: float = 300.0
    result: dict[str, Any] = field(default_factory=dict)

    def show(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return f"[{self.group}] {self.name}\n    {env + ' ' if env else ''}{shlex.join(self.argv)}"


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tests/gpu/check.sh", description="The GPU path in one run.")
    p.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    p.add_argument("--python", type=Path, default=None, help="use this Python as it is (no installs)")
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the check's virtualenv (made if missing)")
    p.add_argument("--wheelhouse", type=Path, default=None, help="install from this folder of wheels only")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="runs, exported models, report.json")
    p.add_argument("--steps", type=int, default=300, help="training steps per recipe")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: rehearse without a GPU")
    p.add_argument("--tolerance", type=float, default=TOLERANCE, help="parity: max |CUDA - CPU|")
    p.add_argument(
        "--budget",
        type=float,
        default=420.0,
        help="seconds after the environment is ready; later steps are skipped past it",
    )
    p.add_argument("--repeats", type=int, default=10, help="timed runs per model (median)")
    p.add_argument("--port", type=int, default=0, help="port for the served checks (0: a free one)")
    return p.parse_args(argv)


def _python(args: argparse.Namespace) -> Path:
    return args.python if args.python else args.venv / "bin" / "python"


def install_steps(args: argparse.Namespace) -> list[Step]:
    """Make ``--venv`` when it is missing: the train and serve extras, then onnxruntime-gpu alone."""
    if args.python is not None or (args.venv / "bin" / "python").exists():
        return []
    pip = [str(args.venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    if args.wheelhouse:
        pip += ["--no-index", "--find-links", str(args.wheelhouse)]
    steps = [
        Step(
            "environment",
            "virtualenv",
            [sys.executable, "-m", "venv", "--system-site-packages", str(args.venv)],
        ),
        Step("environment", "train + serve extras", [*pip, "-e", f"{REPO}[train,serve]"], timeout=900),
    ]
    if args.device == "cuda":  # the two runtimes share one module: remove one, then install the other
        uninstall = [str(args.venv / "bin" / "python"), "-m", "pip", "uninstall", "-y", "onnxruntime"]
        steps += [
            Step("environment", "remove onnxruntime", uninstall),
            Step("environment", "onnxruntime-gpu", [*pip, GPU_RUNTIME], timeout=600),
        ]
    return steps


def plan(args: argparse.Namespace) -> list[Step]:
    """Every command of the check, in order."""
    py = str(_python(args))
    work = args.work
    zoo = work / "models"
    device_provider = "CUDAExecutionProvider" if args.device == "cuda" else "CPUExecutionProvider"
    common = ["--steps", str(args.steps), "--device", args.device, "--num-workers", "2", "--sample-every", "0",
              "--log-every", str(max(1, args.steps // 3))]  # fmt: skip
    steps = install_steps(args)
    steps.append(Step("environment", "versions and devices", [py, str(PROBE), "env"], timeout=120))
    runs = {name: (name, "auto" if args.device == "cuda" else "fp32") for name in RECIPES} | EXTRA_RUNS
    for run, (recipe, precision) in runs.items():
        if args.device == "cpu" and precision == "fp16":  # fp16 needs CUDA
            continue
        train = [
            py,
            "-m",
            "training.cli",
            "train",
            recipe,
            *RECIPES[recipe],
            "--out",
            str(work / "runs" / run),
        ]
        steps.append(Step("train", run, [*train, *common, "--precision", precision], timeout=300))
    for recipe in RECIPES:
        argv = [py, "-m", "training.cli", "export", str(work / "runs" / recipe), "--name", f"check-{recipe}",
                "--out", str(zoo), "--torchscript", *EXPORT_EXTRA.get(recipe, [])]  # fmt: skip
        steps.append(Step("export", recipe, argv, timeout=300))
    steps.append(
        Step("parity", "exported, CUDA vs CPU provider",
             [py, str(PROBE), "parity", str(zoo), "--tolerance", str(args.tolerance), "--device", device_provider])
    )  # fmt: skip
    # the shipped files as well, INT8 ones included: their differences are reported; only a file
    # whose output is not that of the same model (beyond SHIPPED_TOLERANCE) fails
    steps.append(
        Step("parity", "shipped, CUDA vs CPU provider",
             [py, str(PROBE), "parity", str(REPO / "models"), "--tolerance", str(SHIPPED_TOLERANCE),
              "--device", device_provider])
    )  # fmt: skip
    for folder, what in ((REPO / "models", "shipped"), (zoo, "exported")):
        steps.append(
            Step("latency", f"{what} models in onnxruntime",
                 [py, str(PROBE), "latency", str(folder), "--device", device_provider, "--repeats", str(args.repeats)])
        )  # fmt: skip
    served = work / "served"  # the shipped zoo and the exported models side by side
    for providers in (args.device, "cpu") if args.device == "cuda" else ("cpu",):
        env = {"TRANSFIGURE_PROVIDERS": providers, "TRANSFIGURE_MODELS_DIR": str(served)}
        argv = [py, "-m", "training.cli", "serve", "--models-dir", str(served), "--port", "{port}"]
        steps.append(Step("serve", f"BentoML on {providers}", argv, env=env, timeout=240))
    return steps


# -- running ---------------------------------------------------------------------------------------


def _library_path(py: str) -> str:
    """CUDA and cuDNN libraries from the nvidia-* wheels (torch's), for onnxruntime-gpu to find."""
    code = (
        "import os\ntry:\n import nvidia\nexcept ImportError:\n raise SystemExit\n"
        "print(os.pathsep.join(os.path.join(p, d, 'lib') for p in nvidia.__path__ for d in sorted(os.listdir(p))"
        " if os.path.isdir(os.path.join(p, d, 'lib'))))"
    )
    out = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=60).stdout.strip()
    return os.pathsep.join(p for p in (out, os.environ.get("LD_LIBRARY_PATH", "")) if p)


def _last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON result in the output")


def _run(step: Step, base_env: dict[str, str], log_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**base_env, **step.env}
    proc = subprocess.run(step.argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=step.timeout)
    (log_dir / f"{step.group}-{step.name}.log".replace(" ", "_").replace("/", "_")).write_text(
        f"$ {shlex.join(step.argv)}\n{proc.stdout}\n{proc.stderr}"
    )
    return proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(step: Step, args: argparse.Namespace, base_env: dict[str, str], log_dir: Path) -> dict[str, Any]:
    port = args.port or _free_port()
    argv = [a.replace("{port}", str(port)) for a in step.argv]
    log = (log_dir / f"serve-{step.env['TRANSFIGURE_PROVIDERS']}.log").open("w")
    server = subprocess.Popen(argv, cwd=REPO, env={**base_env, **step.env}, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + step.timeout
        while time.monotonic() < deadline:
            if server.poll() is not None:
                return {"ok": False, "error": f"the server exited ({server.returncode}); see {log.name}"}
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(1)
        else:
            return {"ok": False, "error": f"not ready within {step.timeout:.0f} s; see {log.name}"}
        probe = Step(
            "serve",
            "requests",
            [str(_python(args)), str(PROBE), "serve", url, "--repeats", str(max(1, args.repeats // 2))],
            timeout=300,
        )
        proc = _run(probe, base_env, log_dir)
        result = _last_json(proc.stdout)
        want = step.env["TRANSFIGURE_PROVIDERS"]
        wrong = [r["model"] for r in result["serve"] if r["provider"] != want]
        if wrong:
            result.update(ok=False, error=f"/models says these do not run on {want}: {', '.join(wrong)}")
        return result
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def _prepare_served(args: argparse.Namespace) -> None:
    served = args.work / "served"
    served.mkdir(parents=True, exist_ok=True)
    for folder in [
        *sorted((REPO / "models").glob("*/card.json")),
        *sorted((args.work / "models").glob("*/card.json")),
    ]:
        link = served / folder.parent.name
        if not link.exists():
            link.symlink_to(folder.parent.resolve(), target_is_directory=True)


def _check_env(result: dict[str, Any], device: str) -> str | None:
    problems = [result[k] for k in ("torch_error", "onnxruntime_error", "bentoml_error") if k in result]
    if device == "cuda":
        if not result.get("cuda"):
            problems.append("torch sees no CUDA device")
        if "CUDAExecutionProvider" not in result.get("providers", []):
            problems.append("onnxruntime offers no CUDAExecutionProvider (is onnxruntime-gpu installed?)")
    if len(result.get("runtime_packages", [])) > 1:
        problems.append("both onnxruntime and onnxruntime-gpu are installed")
    return "; ".join(problems) or None


def execute(steps: list[Step], args: argparse.Namespace) -> bool:
    args.work.mkdir(parents=True, exist_ok=True)
    log_dir = args.work / "logs"
    log_dir.mkdir(exist_ok=True)
    started = time.monotonic()
    base_env = {**os.environ, "PYTHONUNBUFFERED": "1", "TRANSFIGURE_STRICT": "1"}
    failed_groups: set[str] = set()
    for step in steps:
        if step.group == "environment":
            started = time.monotonic()  # the budget counts from a ready environment
        elif time.monotonic() - started > args.budget:
            step.result = {"ok": False, "skipped": f"past the {args.budget:.0f} s budget"}
            continue
        if "environment" in failed_groups or (
            step.group == "export" and f"train:{step.name}" in failed_groups
        ):
            step.result = {"ok": False, "skipped": "an earlier step failed"}
            continue
        t0 = time.monotonic()
        if step.group == "environment" and step.name == "versions and devices":
            base_env["LD_LIBRARY_PATH"] = _library_path(str(_python(args)))
        try:
            if step.group == "serve":
                _prepare_served(args)
                step.result = _serve(step, args, base_env, log_dir)
            else:
                proc = _run(step, base_env, log_dir)
                step.result = {"ok": proc.returncode == 0}
                if proc.returncode != 0:
                    step.result["error"] = (proc.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
                elif step.argv[1:2] == [str(PROBE)]:
                    step.result.update(_last_json(proc.stdout))
                    if step.group == "environment":
                        problem = _check_env(step.result, args.device)
                        step.result.update(ok=problem is None, **({"error": problem} if problem else {}))
                elif step.group == "train":
                    rates = [float(m) for m in _rates(proc.stdout)]
                    step.result["it_per_s"] = rates[-1] if rates else None
        except (subprocess.TimeoutExpired, ValueError, OSError) as e:
            step.result = {"ok": False, "error": str(e)[:300]}
        step.result["seconds"] = round(time.monotonic() - t0, 1)
        if not step.result["ok"]:
            failed_groups.add(step.group if step.group == "environment" else f"{step.group}:{step.name}")
    report = {"device": args.device, "steps": [{"group": s.group, "name": s.name, **s.result} for s in steps]}
    (args.work / "report.json").write_text(json.dumps(report, indent=2))
    return all(s.result.get("ok") for s in steps)


def _rates(text: str) -> list[str]:
    return re.findall(r"\(([\d.]+) it/s\)", text)


# -- the table -------------------------------------------------------------------------------------


def table(steps: list[Step], device: str) -> str:
    dev = "GPU" if device == "cuda" else "device (CPU rehearsal)"
    rows = [("check", "result", dev, "CPU", "note")]
    for s in steps:
        r = s.result
        status = "skipped" if "skipped" in r else ("ok" if r.get("ok") else "FAILED")
        note = r.get("skipped") or r.get("error") or ""
        if s.group == "environment" and "python" in r:
            note = (
                note
                or f"{r.get('gpu', 'no GPU')}; torch {r.get('torch')}; onnxruntime {r.get('onnxruntime')}"
            )
        if s.group == "train":
            rate = r.get("it_per_s")
            rows.append((f"train {s.name}", status, f"{rate:.1f} steps/s" if rate else "", "", note))
        elif s.group in ("parity", "latency", "serve") and s.group in r:
            for item in r[s.group]:
                if s.group == "parity":
                    rows.append((f"parity {item['model']}", "ok" if item["ok"] else "FAILED",
                                 f"max |d| {item['max_abs_diff']:.2e}", "", f"<= {item['tolerance']:g}"))  # fmt: skip
                elif s.group == "latency":
                    rows.append((f"onnxruntime {item['model']} ({item['precision']})", status,
                                 _ms(item.get("device_ms")), _ms(item.get("cpu_ms")),
                                 item.get("device_ms_error", "") or f"{item['side']} px"))  # fmt: skip
                else:
                    rows.append((f"served {item['endpoint']} {item['model']} ({s.env['TRANSFIGURE_PROVIDERS']})",
                                 "ok" if item["ok"] else f"HTTP {item['status']}",
                                 _ms(item["median_ms"]) if s.env["TRANSFIGURE_PROVIDERS"] != "cpu" else "",
                                 _ms(item["median_ms"]) if s.env["TRANSFIGURE_PROVIDERS"] == "cpu" else "",
                                 f"provider {item['provider']}, {item['served_file']}"))  # fmt: skip
        else:
            rows.append(
                (
                    f"{s.group} {s.name}",
                    status,
                    "",
                    "",
                    note + (f" ({r['seconds']} s)" if "seconds" in r else ""),
                )
            )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _ms(v: float | None) -> str:
    return "" if v is None else f"{v:.1f} ms"


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    steps = plan(args)
    if args.dry_run:
        print(f"GPU check plan ({args.device}, {args.steps} steps per recipe, parity tolerance {args.tolerance:g}, "
              f"budget {args.budget:.0f} s); nothing is run:")  # fmt: skip
        for step in steps:
            print(step.show())
        print(f"then: one table on stdout and {args.work / 'report.json'}")
        return 0
    ok = execute(steps, args)
    print(table(steps, args.device))
    print(f"report: {args.work / 'report.json'}; logs: {args.work / 'logs'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
