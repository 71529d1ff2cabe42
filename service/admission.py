"""Admission: whether a worker takes a request now or refuses it at once (HTTP 503 with Retry-After).

Two bounds, each refusing rather than queueing without end:

* **Time** (``QueueAdmission``): a request may wait for an inference lane at most
  ``TRANSFIGURE_MAX_QUEUE_MS``, counted from its arrival. The wait a new request can expect is
  the work ahead of it (each admitted request's estimated inference time, from an average of its
  model's recent inference times at its size) spread over the lanes; past the target it is refused
  at once, with a Retry-After of the expected drain time, and a request still waiting when the
  target has passed is refused rather than run late. So an admitted request answers in about the
  target plus its own inference time however many arrive, and the rest are free to retry at once
  elsewhere (another replica) or later.
* **Memory** (``PixelBudget``): a translator that runs at full resolution needs memory in
  proportion to the image (a 12-MP photo through a guided translator: ~1 GB at its peak,
  onnxruntime's arena included), and requests are decoded before they wait for an inference
  lane, so without a bound a worker's memory grows with the number of large requests in flight
  until the kernel kills it. ``PixelBudget`` counts the decoded pixels of the requests between
  their decode and the end of their encode; a request that would take the total above the budget
  is refused at once rather than queued, because a queued decoded image holds its memory while it
  waits. A request alone is always admitted, so the per-request limits
  (``TRANSFIGURE_MAX_PIXELS``) decide what can be served at all.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from service.zoo import InferenceSlots, SlotExpired

RETRY_AFTER_S = 1  # the Retry-After of "too busy" answers with no drain time to go by (429, 503)


class ServerBusy(RuntimeError):
    """The worker is too busy for this request; the message says why and when to retry (HTTP 503).

    ``reason`` is one of ``REFUSAL_REASONS``; ``retry_after_s`` is the answer's Retry-After.
    """

    status_code = 503

    def __init__(self, message: str, reason: str = "pixel_budget", retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s


class PixelBudget:
    """At most ``limit`` pixels in flight (thread-safe); ``hold(n)`` admits or raises ``ServerBusy``."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a pixel budget must be at least 1 pixel, got {limit}")
        self.limit = int(limit)
        self._lock = threading.Lock()
        self.in_flight = 0

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Count ``pixels`` as in flight for the block; refused when others hold too many already."""
        pixels = max(0, int(pixels))
        with self._lock:
            if self.in_flight and self.in_flight + pixels > self.limit:
                held = self.in_flight
                raise ServerBusy(
                    f"the server is working on {held / 1e6:.1f} MP of images and this one has "
                    f"{pixels / 1e6:.1f} MP; the limit in flight is {self.limit / 1e6:.1f} MP "
                    "(TRANSFIGURE_MAX_PIXELS_IN_FLIGHT): retry in a moment"
                )
            self.in_flight += pixels
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= pixels


# -- admission by expected queueing time ---------------------------------------------------------

REFUSAL_REASONS = ("expected_wait", "queue_timeout", "pixel_budget")


def retry_after_s(seconds: float) -> int:
    """A Retry-After in whole seconds for a queue expected to drain in ``seconds``: at least 1."""
    return max(1, math.ceil(seconds)) if math.isfinite(seconds) else RETRY_AFTER_S


def size_class(pixels: int) -> int:
    """The size class of an inference of ``pixels`` pixels: classes double in pixels."""
    return max(0, int(pixels)).bit_length()


class ServiceTimes:
    """Recent inference time per model and size class: an exponentially weighted moving average.

    ``estimate(model, pixels)`` is the average of the request's own size class; a class not seen yet
    is scaled (in proportion to pixels) from the model's nearest class that has been, and a model
    not seen at all is estimated at 0 s (nothing is refused for it until its first inference ends).
    Thread-safe.
    """

    def __init__(self, alpha: float = 0.2) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self._lock = threading.Lock()
        # model -> size class -> [seconds, pixels] (both averaged)
        self._by_model: dict[str, dict[int, list[float]]] = {}
        self._typical = 0.0  # every inference, any model and size: for a request not yet parsed

    def observe(self, model: str, pixels: int, seconds: float) -> None:
        pixels, seconds = max(1, int(pixels)), max(0.0, float(seconds))
        with self._lock:
            classes = self._by_model.setdefault(model, {})
            entry = classes.get(size_class(pixels))
            self._typical = (
                seconds if not self._typical else self._typical + self.alpha * (seconds - self._typical)
            )
            if entry is None:
                classes[size_class(pixels)] = [seconds, float(pixels)]
            else:
                entry[0] += self.alpha * (seconds - entry[0])
                entry[1] += self.alpha * (pixels - entry[1])

    def estimate(self, model: str, pixels: int) -> float:
        pixels = max(1, int(pixels))
        with self._lock:
            classes = self._by_model.get(model)
            if not classes:
                return 0.0
            wanted = size_class(pixels)
            if wanted in classes:
                return classes[wanted][0]
            nearest = min(classes, key=lambda c: (abs(c - wanted), c))
            seconds, seen_pixels = classes[nearest]
            return seconds * pixels / max(seen_pixels, 1.0)

    def typical(self) -> float:
        """The average of every inference (any model, any size); 0 before the first."""
        return self._typical

    def snapshot(self) -> dict[str, dict[int, float]]:
        """{model: {size class: seconds}} (for /metrics and tests)."""
        with self._lock:
            return {m: {c: e[0] for c, e in cl.items()} for m, cl in self._by_model.items()}


@dataclass(eq=False)
class Ticket:
    """One admitted request: counted in the expected wait of later ones until its inference ends."""

    model: str
    pixels: int
    cost_s: float  # the estimated inference time when admitted
    arrival: float  # clock() seconds: when the request arrived
    exclusive: bool = False
    started: float | None = None  # clock() seconds: when its inference started
    queue_s: float | None = None  # how long it waited for its turn, its own work excluded


class QueueAdmission:
    """Admit a request only if its expected wait for an inference lane is at most ``target_s``.

    The expected wait of a new request is the work ahead of it spread over the lanes: the estimated
    inference time (``ServiceTimes``) of every admitted request that has not started yet, plus what
    is left of the running ones, divided by ``lanes`` (an exclusive inference takes every lane).
    ``admit()`` adds the time the request has already spent since it arrived and refuses it at once
    (``ServerBusy``, reason ``expected_wait``) when the sum passes the target, with a Retry-After of
    the expected drain time; a request with nothing admitted ahead of it is always admitted. ``run()`` holds the inference slot of an admitted request, first come,
    first served; a request still waiting when the target has passed since its arrival (its own
    work, e.g. decoding, not counted) is refused (reason ``queue_timeout``) rather than run late.
    ``clock`` is ``time.monotonic`` unless a test gives its own.
    """

    def __init__(
        self,
        target_s: float,
        lanes: int,
        times: ServiceTimes | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if target_s <= 0:
            raise ValueError(f"a queueing target must be positive, got {target_s} s")
        self.target_s = float(target_s)
        self.lanes = max(1, int(lanes))
        self.times = times or ServiceTimes()
        self.clock = clock
        self._lock = threading.Lock()
        self._admitted: set[Ticket] = set()
        self.refused = dict.fromkeys(REFUSAL_REASONS, 0)

    def _lane_seconds(self, ticket: Ticket, now: float) -> float:
        if not ticket.model:  # admitted at the door, not parsed yet: not waiting for a lane yet
            return 0.0
        left = ticket.cost_s if ticket.started is None else max(0.0, ticket.cost_s - (now - ticket.started))
        return left * (self.lanes if ticket.exclusive else 1)

    def expected_wait(self, now: float | None = None) -> float:
        """Seconds a request arriving now is expected to wait for an inference lane."""
        now = self.clock() if now is None else now
        with self._lock:
            return sum(self._lane_seconds(t, now) for t in self._admitted) / self.lanes

    @property
    def in_flight(self) -> int:
        """Admitted requests whose inference has not ended."""
        return len(self._admitted)

    def refuse(self, reason: str, message: str, wait_s: float | None = None) -> ServerBusy:
        """Count a refusal and return its ``ServerBusy`` (to raise), Retry-After from the drain time."""
        wait_s = self.expected_wait() if wait_s is None else wait_s
        with self._lock:
            self.refused[reason] = self.refused.get(reason, 0) + 1
        return ServerBusy(message, reason=reason, retry_after_s=retry_after_s(wait_s))

    def check(self, arrival: float | None = None) -> None:
        """Raise ``ServerBusy`` (``expected_wait``) if a request that arrived at ``arrival`` would wait too long."""
        now = self.clock()
        waited = 0.0 if arrival is None else max(0.0, now - arrival)
        wait = self.expected_wait(now)
        if self._admitted and waited + wait > self.target_s:  # nothing ahead: always admitted
            raise self.refuse(
                "expected_wait",
                f"the server is busy: a new request would wait about {wait:.1f} s for its turn, more than "
                f"the {self.target_s * 1000:.0f} ms it may queue (TRANSFIGURE_MAX_QUEUE_MS); retry in "
                f"{retry_after_s(wait)} s",
                wait,
            )

    def admit(self, model: str, pixels: int, arrival: float | None = None, exclusive: bool = False) -> Ticket:
        """Admit a request for ``pixels`` pixels of ``model`` or raise ``ServerBusy``; ``release()`` it after."""
        arrival = self.clock() if arrival is None else arrival
        self.check(arrival)
        ticket = Ticket(model, int(pixels), self.times.estimate(model, pixels), arrival, exclusive)
        with self._lock:
            self._admitted.add(ticket)
        return ticket

    def admit_at_door(self) -> Ticket:
        """Admit a request before its body is read, or raise ``ServerBusy`` (so a refusal costs no
        parsing); ``assign()`` says what it is once parsed, and from then on it counts in the wait."""
        self.check()
        ticket = Ticket("", 0, self.times.typical(), self.clock())
        with self._lock:
            self._admitted.add(ticket)
        return ticket

    def assign(
        self, ticket: Ticket, model: str, pixels: int, arrival: float | None = None, exclusive: bool = False
    ) -> Ticket:
        """A door-admitted request's model and size (its estimate follows), and its arrival."""
        cost = self.times.estimate(model, pixels)
        with self._lock:
            ticket.model, ticket.pixels, ticket.cost_s, ticket.exclusive = model, int(pixels), cost, exclusive
            if arrival is not None:
                ticket.arrival = arrival
        return ticket

    def release(self, ticket: Ticket) -> None:
        """The request is done (answered or refused): it no longer counts in anyone's wait."""
        with self._lock:
            self._admitted.discard(ticket)

    @contextmanager
    def run(
        self,
        slots: InferenceSlots,
        model: str,
        pixels: int,
        ticket: Ticket | None = None,
        exclusive: bool = False,
        own_work_s: float = 0.0,
    ) -> Iterator[bool]:
        """Hold an inference slot (yields True when it runs wide); the time it takes is recorded.

        With a ``ticket``: the request waits at most until ``target_s`` after its arrival plus
        ``own_work_s`` (what it did itself before, e.g. decoding); else ``ServerBusy`` (queue_timeout).
        """
        deadline = None
        if ticket is not None:
            deadline = ticket.arrival + own_work_s + self.target_s
            deadline += time.monotonic() - self.clock()  # InferenceSlots waits on the real clock
        try:
            with slots.slot(exclusive=exclusive, deadline=deadline) as wide:
                started = self.clock()
                if ticket is not None:
                    ticket.started = started
                    ticket.queue_s = max(0.0, started - ticket.arrival - own_work_s)
                try:
                    yield wide
                finally:
                    self.times.observe(model, pixels, self.clock() - started)
                    if ticket is not None:
                        self.release(ticket)
        except SlotExpired:
            assert ticket is not None
            self.release(ticket)
            raise self.refuse(
                "queue_timeout",
                f"the server is busy: this request waited {self.target_s * 1000:.0f} ms for its turn, as long "
                f"as a request may queue (TRANSFIGURE_MAX_QUEUE_MS), and was not run; retry in "
                f"{retry_after_s(self.expected_wait())} s",
            ) from None
