"""service.zoo: CPU sizing, session options, loading/validating the zoo, look-ups and their errors."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from models.card import CardError
from service.zoo import (
    InferenceSlots,
    ModelNotFound,
    WrongTask,
    Zoo,
    _cgroup_cpu_limit,
    check_cards,
    cpu_count,
    session_options,
)
from tests.tiny_models import make_model, make_zoo


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_zoo(tmp_path_factory.mktemp("zoo"))
    make_model(root, "translate", "grey", channels=1)
    return root


@pytest.fixture(scope="module")
def zoo(zoo_dir: Path) -> Zoo:
    return Zoo.load(zoo_dir, threads=1)


# -- CPUs ----------------------------------------------------------------------------------------


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_cpu_limit(tmp_path) == pytest.approx(1.5)
    assert cpu_count(tmp_path) == min(len(os.sched_getaffinity(0)), 2)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_cpu_limit(tmp_path) is None
    assert cpu_count(tmp_path) == len(os.sched_getaffinity(0))


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_cpu_limit(tmp_path) == pytest.approx(0.5)
    assert cpu_count(tmp_path) == 1  # never 0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert _cgroup_cpu_limit(tmp_path) is None


def test_session_options_split_cpus_between_workers() -> None:
    cpus = cpu_count()
    one = session_options()
    assert one.intra_op_num_threads == cpus
    two = session_options(workers=2)
    assert two.intra_op_num_threads == max(1, cpus // 2)
    assert two.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options(threads=3).intra_op_num_threads == 3
    assert session_options(workers=64).intra_op_num_threads == 1


# -- loading -------------------------------------------------------------------------------------


def test_load_names_tasks_and_run(zoo: Zoo, zoo_dir: Path) -> None:
    assert zoo.root == zoo_dir
    assert zoo.names() == ["grey", "tiny-sample", "tiny-translate", "tiny-upscale"]
    assert zoo.names("translate") == ["grey", "tiny-translate"]
    assert len(zoo) == 4 and "tiny-sample" in zoo
    assert [c.name for c in zoo.cards()] == zoo.names()
    m = zoo.get("tiny-translate", "translate")
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 8, 12)).astype(np.float32)
    np.testing.assert_allclose(m.run({"image": x}), -x)
    zoo.warmup()  # every task's native-size feeds are accepted


def test_unknown_and_wrong_task_messages_list_the_valid_models(zoo: Zoo) -> None:
    with pytest.raises(ModelNotFound, match=r"unknown model 'nope': available: grey, tiny-translate$"):
        zoo.get("nope", "translate")
    with pytest.raises(ModelNotFound, match="available: grey, tiny-sample, tiny-translate, tiny-upscale"):
        zoo.get("nope")
    with pytest.raises(
        WrongTask,
        match=r"model 'tiny-sample' is a 'sample' model; /translate needs one of: grey, tiny-translate",
    ):
        zoo.get("tiny-sample", "translate")
    with pytest.raises(WrongTask, match="/upscale needs one of: tiny-upscale"):
        zoo.get("grey", "upscale")


def test_sha256_mismatch_is_refused_naming_the_file(tmp_path: Path) -> None:
    make_zoo(tmp_path)
    onnx_path = tmp_path / "tiny-upscale" / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    with pytest.raises(CardError, match=str(onnx_path) + ": sha256"):
        Zoo.load(tmp_path)
    with pytest.raises(CardError, match=str(onnx_path)):
        check_cards(tmp_path)
    lenient = Zoo.load(tmp_path, strict=False)
    assert lenient.names() == ["tiny-sample", "tiny-translate"]
    assert "sha256" in lenient.unavailable["tiny-upscale"]
    with pytest.raises(ModelNotFound, match="'tiny-upscale' is unavailable"):
        lenient.get("tiny-upscale", "upscale")
    cards, problems = check_cards(tmp_path, strict=False)
    assert [c.name for c in cards] == ["tiny-sample", "tiny-translate"] and list(problems) == ["tiny-upscale"]


def test_missing_file_and_bad_card_are_refused(tmp_path: Path) -> None:
    make_zoo(tmp_path, kinds=("translate", "sample"))
    (tmp_path / "tiny-translate" / "model.onnx").unlink()
    with pytest.raises(CardError, match=r"tiny-translate/model.onnx: model file .* is missing"):
        Zoo.load(tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "card.json").write_text(json.dumps({"name": "broken"}))
    zoo = Zoo.load(tmp_path, strict=False)
    assert zoo.names() == ["tiny-sample"]
    assert set(zoo.unavailable) == {"broken", "tiny-translate"}
    assert "field 'task': missing" in zoo.unavailable["broken"]


def test_graph_without_the_contract_names_is_refused(tmp_path: Path) -> None:
    # a sample card pointing at a translate graph: inputs 'z'/'label' are missing
    src = make_model(tmp_path, "translate", "t")
    make_model(tmp_path, "sample", "s")
    card = json.loads((tmp_path / "s" / "card.json").read_text())
    (tmp_path / "s" / "model.onnx").write_bytes((src / "model.onnx").read_bytes())
    card["sha256"] = json.loads((src / "card.json").read_text())["sha256"]
    (tmp_path / "s" / "card.json").write_text(json.dumps(card))
    with pytest.raises(CardError, match=r"s/model.onnx: a 'sample' model needs inputs \['z', 'label'\]"):
        Zoo.load(tmp_path)


def test_names_filter_and_missing_name(zoo_dir: Path) -> None:
    zoo = Zoo.load(zoo_dir, names=["tiny-sample"], threads=1)
    assert zoo.names() == ["tiny-sample"]
    with pytest.raises(CardError, match="'ghost' was asked for"):
        Zoo.load(zoo_dir, names=["ghost"])
    assert "ghost" in Zoo.load(zoo_dir, names=["ghost"], strict=False).unavailable


def test_empty_or_missing_zoo_loads_empty(tmp_path: Path) -> None:
    assert len(Zoo.load(tmp_path)) == 0
    assert len(Zoo.load(tmp_path / "does-not-exist")) == 0
    with pytest.raises(ModelNotFound, match=r"available: \(none loaded\)"):
        Zoo.load(tmp_path).get("x", "sample")


# -- inference lanes ---------------------------------------------------------------------------


def _until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_a_lone_inference_runs_wide_and_queued_ones_run_narrow_side_by_side() -> None:
    slots = InferenceSlots(2)
    with slots.slot() as wide:
        assert wide  # nothing else running or waiting: every thread
    log: list[tuple[str, bool, float, float]] = []
    release = threading.Event()

    def job(name: str, hold: threading.Event | None = None) -> None:
        with slots.slot() as w:
            t0 = time.monotonic()
            if hold is not None:
                hold.wait(5)
            else:
                time.sleep(0.2)
            log.append((name, w, t0, time.monotonic()))

    first = threading.Thread(target=job, args=("first", release))
    first.start()
    _until(lambda: slots.running == 1)  # "first" holds the server wide; two more requests queue
    queued = [threading.Thread(target=job, args=(n,)) for n in ("b", "c")]
    for t in queued:
        t.start()
    _until(lambda: slots.waiting == 2)
    time.sleep(0.05)
    assert not log  # nobody overtakes a wide inference
    release.set()
    for t in [first, *queued]:
        t.join(5)
    by = {name: (w, t0, t1) for name, w, t0, t1 in log}
    assert by["first"][0] and not by["b"][0] and not by["c"][0]
    assert by["b"][1] >= by["first"][2] and by["c"][1] >= by["first"][2]  # after the wide one ended
    assert by["b"][1] < by["c"][2] and by["c"][1] < by["b"][2]  # ...and side by side with each other


def test_one_lane_is_a_plain_semaphore() -> None:
    slots = InferenceSlots(1)
    inside, most = [0], [0]
    lock = threading.Lock()

    def job() -> None:
        with slots.slot() as wide:
            assert wide
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.02)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=job) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert most[0] == 1


def test_an_exclusive_inference_waits_for_the_lanes_runs_wide_alone_and_holds_back_newcomers() -> None:
    slots = InferenceSlots(2)
    log: dict[str, tuple[bool, float, float]] = {}
    gates = {name: threading.Event() for name in ("a", "b", "c")}

    def job(name: str, exclusive: bool = False) -> None:
        with slots.slot(exclusive=exclusive) as wide:
            t0 = time.monotonic()
            if name in gates:
                gates[name].wait(5)
            else:
                time.sleep(0.1)
            log[name] = (wide, t0, time.monotonic())

    threads = {n: threading.Thread(target=job, args=(n, n == "x")) for n in ("a", "b", "c", "x", "d")}
    threads["a"].start()
    _until(lambda: slots.running == 1)
    threads["b"].start()
    threads["c"].start()
    _until(lambda: slots.waiting == 2)
    gates["a"].set()
    _until(lambda: slots.running == 2)  # b and c side by side, narrow
    threads["x"].start()  # a large image: waits for both lanes to empty
    _until(lambda: slots.waiting == 1)
    threads["d"].start()  # arrives after it: waits for it, although a lane frees up first
    _until(lambda: slots.waiting == 2)
    gates["b"].set()
    time.sleep(0.05)
    assert "x" not in log and "d" not in log and slots.running == 1
    gates["c"].set()
    for t in threads.values():
        t.join(5)
    x_wide, x0, x1 = log["x"]
    assert x_wide and not log["b"][0] and not log["c"][0]
    assert x0 >= max(log["b"][2], log["c"][2])  # after both narrow ones
    assert log["d"][1] >= x1  # and nothing ran beside it


def test_a_narrow_slot_runs_the_one_thread_session(zoo_dir: Path) -> None:
    zoo = Zoo.load(zoo_dir, threads=2, narrow=True)
    model = zoo.get("tiny-translate")
    assert model.narrow_session is not None
    assert model.session.get_session_options().intra_op_num_threads == 2
    assert model.narrow_session.get_session_options().intra_op_num_threads == 1
    used = []

    class Spy:
        def __init__(self, name: str, session) -> None:
            self.name, self.session = name, session

        def run(self, *args, **kwargs):
            used.append(self.name)
            return self.session.run(*args, **kwargs)

    model.session, model.narrow_session = Spy("wide", model.session), Spy("narrow", model.narrow_session)
    feeds = model.warmup_feeds()
    slots = InferenceSlots(2)
    with slots.slot():  # alone: wide
        wide_out = model.run(feeds)
    release, outs = threading.Event(), {}

    def hold() -> None:
        with slots.slot():
            release.wait(5)

    both_inside = threading.Barrier(2, timeout=5)

    def infer(name: str) -> None:
        with slots.slot():
            outs[name] = model.run(feeds)
            both_inside.wait()  # the two queued inferences overlap: each one is narrow

    holder = threading.Thread(target=hold)
    holder.start()
    _until(lambda: slots.running == 1)
    queued = [threading.Thread(target=infer, args=(n,)) for n in ("b", "c")]
    for t in queued:
        t.start()
    _until(lambda: slots.waiting == 2)
    release.set()
    for t in [holder, *queued]:
        t.join(5)
    assert used == ["wide", "narrow", "narrow"]
    assert all(np.allclose(wide_out, out, atol=1e-5) for out in outs.values())
    assert Zoo.load(zoo_dir, threads=1, narrow=True).get("tiny-translate").narrow_session is None
