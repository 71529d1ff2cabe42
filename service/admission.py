"""How many image pixels a worker works on at once: the memory bound of requests in flight.

A translator that runs at full resolution needs memory in proportion to the image (a 12-MP photo
through a guided translator: ~1 GB at its peak, onnxruntime's arena included), and requests are
decoded before they wait for an inference lane, so without a bound a worker's memory grows with
the number of large requests in flight until the kernel kills it. ``PixelBudget`` counts the
decoded pixels of the requests between their decode and the end of their encode; a request that
would take the total above the budget is refused at once (``ServerBusy``, HTTP 503 with
Retry-After) rather than queued, because a queued decoded image holds its memory while it waits. A
request alone is always admitted, so the per-request limits (``TRANSFIGURE_MAX_PIXELS``) decide
what can be served at all.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

RETRY_AFTER_S = 1  # the Retry-After of the service's "too busy" answers (429, 503)


class ServerBusy(RuntimeError):
    """The worker holds as many pixels as it may; the message says so and to retry (HTTP 503)."""

    status_code = 503


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
