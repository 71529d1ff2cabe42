"""Admission by expected queueing time (service.admission) and the first-come-first-served lanes
(service.zoo.InferenceSlots): deterministic with a fake clock where no thread has to wait."""

from __future__ import annotations

import threading
import time

import pytest

from service.admission import QueueAdmission, ServerBusy, ServiceTimes, retry_after_s, size_class
from service.zoo import InferenceSlots, SlotExpired


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.002)


# -- the estimator -------------------------------------------------------------------------------


def test_service_times_average_per_model_and_size_class() -> None:
    times = ServiceTimes(alpha=0.5)
    assert times.estimate("m", 256 * 256) == 0.0  # nothing seen: nothing refused on its account
    times.observe("m", 256 * 256, 0.1)
    assert times.estimate("m", 256 * 256) == pytest.approx(0.1)
    times.observe("m", 256 * 256, 0.3)
    assert times.estimate("m", 256 * 256) == pytest.approx(0.2)  # EWMA, alpha 0.5
    assert times.estimate("other", 256 * 256) == 0.0
    # a size not seen yet: scaled in proportion to pixels from the nearest class seen
    assert times.estimate("m", 512 * 512) == pytest.approx(0.8)
    times.observe("m", 512 * 512, 0.5)
    assert times.estimate("m", 512 * 512) == pytest.approx(0.5)
    assert size_class(512 * 512) == size_class(512 * 512 + 1000) != size_class(256 * 256)


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert retry_after_s(0.0) == 1
    assert retry_after_s(0.2) == 1
    assert retry_after_s(2.01) == 3
    assert retry_after_s(float("inf")) == 1


# -- admission -----------------------------------------------------------------------------------


def _admission(
    target_s: float = 0.5, lanes: int = 1, cost_s: float = 0.1
) -> tuple[QueueAdmission, FakeClock]:
    clock = FakeClock()
    times = ServiceTimes()
    times.observe("m", 100, cost_s)
    return QueueAdmission(target_s, lanes, times, clock=clock), clock


def test_a_request_is_refused_at_once_when_its_expected_wait_passes_the_target() -> None:
    adm, clock = _admission(target_s=0.5, cost_s=0.1)
    tickets = [adm.admit("m", 100) for _ in range(6)]  # waits 0, 0.1, ..., 0.5: all within the target
    assert adm.expected_wait() == pytest.approx(0.6)
    with pytest.raises(ServerBusy) as e:
        adm.admit("m", 100)
    assert e.value.reason == "expected_wait" and e.value.status_code == 503
    assert e.value.retry_after_s == 1  # ceil(0.6 s)
    assert "TRANSFIGURE_MAX_QUEUE_MS" in str(e.value)
    assert adm.refused["expected_wait"] == 1 and adm.in_flight == 6
    adm.release(tickets[0])
    assert adm.admit("m", 100)  # one done: room again


def test_retry_after_is_the_expected_drain_time() -> None:
    adm, _ = _admission(target_s=2.5, cost_s=1.0)
    for _ in range(3):
        adm.admit("m", 100)
    with pytest.raises(ServerBusy) as e:
        adm.admit("m", 100)
    assert e.value.retry_after_s == 3


def test_the_wait_is_counted_from_the_arrival() -> None:
    adm, clock = _admission(target_s=0.5, cost_s=0.1)
    adm.admit("m", 100, arrival=clock.now - 5)  # nothing admitted ahead: always admitted
    adm.admit("m", 100, arrival=clock.now - 0.35)  # 0.35 s since arrival + 0.1 s ahead: admitted
    with pytest.raises(ServerBusy):
        adm.admit("m", 100, arrival=clock.now - 0.35)  # 0.35 + 0.2 > 0.5


def test_lanes_share_the_work_and_an_exclusive_request_takes_them_all() -> None:
    adm, _ = _admission(target_s=10, lanes=2, cost_s=1.0)
    adm.admit("m", 100)
    adm.admit("m", 100)
    assert adm.expected_wait() == pytest.approx(1.0)  # 2 s of work over 2 lanes
    big = adm.admit("m", 100, exclusive=True)
    assert adm.expected_wait() == pytest.approx(2.0)  # + 1 s with both lanes held
    adm.release(big)
    assert adm.expected_wait() == pytest.approx(1.0)


def test_a_running_request_counts_only_what_is_left_of_it() -> None:
    adm, clock = _admission(target_s=10, cost_s=1.0)
    slots = InferenceSlots(1)
    ticket = adm.admit("m", 100)
    with adm.run(slots, "m", 100, ticket):
        assert adm.expected_wait() == pytest.approx(1.0)
        clock.now += 0.75
        assert adm.expected_wait() == pytest.approx(0.25)
        clock.now += 1.0
        assert adm.expected_wait() == 0.0  # overdue: nothing left, not negative
    assert adm.in_flight == 0
    assert ticket.queue_s == 0.0
    # and its time went into the average (EWMA 0.2 of 1.0 and 1.75 s)
    assert adm.times.estimate("m", 100) == pytest.approx(1.15)


def test_an_idle_server_admits_anything_and_learns_a_new_model() -> None:
    adm, clock = _admission(target_s=0.001, cost_s=5.0)
    slots = InferenceSlots(1)
    ticket = adm.admit("new", 4096)  # nothing in flight: admitted however slow the model
    with adm.run(slots, "new", 4096, ticket):
        clock.now += 0.3
    assert adm.times.estimate("new", 4096) == pytest.approx(0.3)


def test_the_queue_time_leaves_out_the_requests_own_work() -> None:
    adm, clock = _admission(target_s=0.5)
    slots = InferenceSlots(1)
    ticket = adm.admit("m", 100)
    clock.now += 0.4  # e.g. decoding a large image
    with adm.run(slots, "m", 100, ticket, own_work_s=0.4):
        pass
    assert ticket.queue_s == pytest.approx(0.0)


# -- queue timeout (real threads, short real waits) ----------------------------------------------


def test_a_request_whose_turn_does_not_come_within_the_target_is_refused_not_run() -> None:
    adm = QueueAdmission(0.1, 1)
    slots = InferenceSlots(1)
    release = threading.Event()

    def hold() -> None:
        with slots.slot():
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    _until(lambda: slots.running == 1)
    ticket = adm.admit("m", 100)
    ran = []
    t0 = time.monotonic()
    with pytest.raises(ServerBusy) as e, adm.run(slots, "m", 100, ticket):
        ran.append(True)
    waited = time.monotonic() - t0
    release.set()
    holder.join(5)
    assert not ran and e.value.reason == "queue_timeout" and e.value.retry_after_s >= 1
    assert 0.08 <= waited < 1.0
    assert adm.in_flight == 0 and adm.refused["queue_timeout"] == 1
    assert slots.waiting == 0 and slots.running == 0
    with slots.slot():  # and the lanes still work
        pass


def test_the_deadline_counts_from_the_arrival() -> None:
    adm = QueueAdmission(0.2, 1)
    slots = InferenceSlots(1)
    with slots.slot():  # the lane is busy: the ticket must wait
        ticket = adm.admit("m", 100, arrival=time.monotonic() - 0.5)  # nothing admitted ahead: admitted
        t0 = time.monotonic()
        with pytest.raises(ServerBusy), adm.run(slots, "m", 100, ticket):
            pass
        assert time.monotonic() - t0 < 0.1  # already past its deadline: refused at once


# -- first come, first served --------------------------------------------------------------------


def test_waiting_requests_are_served_in_arrival_order() -> None:
    lanes = 1
    slots = InferenceSlots(lanes)
    order: list[int] = []
    lock = threading.Lock()
    release = threading.Event()

    def hold() -> None:
        with slots.slot():
            release.wait(5)

    def job(i: int) -> None:
        with slots.slot():
            with lock:
                order.append(i)
            time.sleep(0.002)

    holders = [threading.Thread(target=hold) for _ in range(lanes)]
    for h in holders:
        h.start()
    _until(lambda: slots.running == lanes)
    threads = []
    for i in range(30):
        t = threading.Thread(target=job, args=(i,))
        t.start()
        threads.append(t)
        _until(lambda i=i: slots.waiting == i + 1)  # queued in this order
    release.set()
    for t in holders + threads:
        t.join(5)
    assert order == list(range(30))  # threading.Condition.notify_all would wake them in any order


def test_an_expired_exclusive_waiter_lets_the_ones_behind_it_start() -> None:
    slots = InferenceSlots(2)
    gates = {name: threading.Event() for name in ("a", "b", "c")}
    started = threading.Event()

    def hold(name: str) -> None:
        with slots.slot():
            gates[name].wait(5)

    holders = {n: threading.Thread(target=hold, args=(n,)) for n in gates}
    holders["a"].start()  # alone: wide
    _until(lambda: slots.running == 1)
    holders["b"].start()
    holders["c"].start()
    _until(lambda: slots.waiting == 2)
    gates["a"].set()  # b and c run narrow side by side...
    _until(lambda: slots.running == 2)
    gates["c"].set()  # ...and b goes on alone, narrow: one lane is free
    _until(lambda: slots.running == 1)
    expired = []

    def exclusive() -> None:
        try:
            with slots.slot(exclusive=True, deadline=time.monotonic() + 0.2):
                pass
        except SlotExpired:
            expired.append(True)

    def narrow() -> None:
        with slots.slot():
            started.set()

    x = threading.Thread(target=exclusive)
    x.start()
    _until(lambda: slots.waiting == 1)
    n = threading.Thread(target=narrow)
    n.start()
    _until(lambda: slots.waiting == 2)
    assert not started.wait(0.05)  # held back behind the exclusive one, although a lane is free...
    assert started.wait(2)  # ...until it gave up; then it runs beside b
    assert expired == [True]
    gates["b"].set()
    for t in (*holders.values(), x, n):
        t.join(5)


# -- the middleware: refused before the body is read; the arrival is stamped ---------------------


def test_the_middleware_refuses_before_reading_the_body_and_stamps_the_arrival() -> None:
    import asyncio

    import httpx

    from service.middleware import ARRIVAL_KEY, GuardMiddleware

    seen: list[float] = []
    read: list[bytes] = []

    async def app(scope, receive, send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        read.append(body)
        seen.append(scope[ARRIVAL_KEY])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    busy_paths: list[str] = []

    def busy(path: str, scope):
        busy_paths.append(path)
        return (
            ({"error": "busy", "reason": "expected_wait", "retry_after_s": 3}, 3)
            if path == "/translate"
            else None
        )

    async def go() -> None:
        guarded = GuardMiddleware(app, max_body_bytes=1000, busy=busy)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guarded), base_url="http://t") as c:
            r = await c.post("/translate", content=b"x" * 10)
            assert r.status_code == 503 and r.headers["retry-after"] == "3"
            assert r.json()["reason"] == "expected_wait"
            assert not read  # refused without the app reading the body
            before = time.monotonic()
            r = await c.post("/upscale", content=b"y" * 10)
            assert r.status_code == 200 and read == [b"y" * 10]
            assert before <= seen[0] <= time.monotonic()
            assert (await c.get("/translate")).status_code == 200  # only POSTs are checked

    asyncio.run(go())
    assert busy_paths == ["/translate", "/upscale"]


def test_a_request_admitted_at_the_door_counts_once_its_model_and_size_are_known() -> None:
    adm, clock = _admission(target_s=0.5, cost_s=0.3)
    first = adm.admit_at_door()  # nothing ahead: admitted; not parsed yet, so nobody waits for it
    assert adm.expected_wait() == 0.0 and adm.in_flight == 1
    adm.assign(first, "m", 100, arrival=clock.now)
    assert adm.expected_wait() == pytest.approx(0.3)
    second = adm.admit_at_door()
    adm.assign(second, "m", 100)
    with pytest.raises(ServerBusy) as e:  # 0.6 s ahead
        adm.admit_at_door()
    assert e.value.reason == "expected_wait"
    adm.release(first)
    adm.release(second)
    assert adm.in_flight == 0
