"""``demo --chaos``: restart the embedded nats-server once, mid-run."""

from __future__ import annotations

import threading
import time
from typing import Optional

from .._server import NatsServer
from ._demo_timeline import Timeline

_DEMO_DOWNTIME_SECONDS = 0.8


class ServerRestart:
    """Restarts the embedded server once, after ``trigger_at`` events were acknowledged.

    Producers call :meth:`hold` before each event: once the restart is due they wait
    until the server is down, so the outage always lands in the middle of the run.
    """

    def __init__(self, server: NatsServer, trigger_at: int, timeline: Timeline) -> None:
        self._server = server
        self._trigger_at = trigger_at
        self._timeline = timeline
        self._due = threading.Event()
        self._down = threading.Event()
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name="cellos-demo-chaos", daemon=True)
        #: Why the restart failed, if it did.
        self.error: Optional[str] = None

    def start(self) -> None:
        """Start waiting for the trigger."""
        self._thread.start()

    def note_acked(self, acked: int) -> None:
        """Called with the running count of acknowledged events."""
        if acked >= self._trigger_at:
            self._due.set()

    def hold(self) -> None:
        """Block a producer while the server is being stopped."""
        if self._due.is_set():
            self._down.wait(30.0)

    def finish(self) -> None:
        """Wait for the restart to complete (or cancel it if it never became due)."""
        self._cancelled = True
        self._due.set()
        self._thread.join(60.0)

    def _run(self) -> None:
        self._due.wait()
        try:
            if self._cancelled:
                return
            self._timeline.say(
                f"chaos: stopping nats-server after {self._trigger_at} acknowledged events"
            )
            self._server.stop()
            self._down.set()
            time.sleep(_DEMO_DOWNTIME_SECONDS)
            self._timeline.say("chaos: starting nats-server again (same port and store)")
            self._server.start()
            self._timeline.say("chaos: nats-server is back; the next probe closes the breaker")
        except Exception as exc:
            self.error = f"restarting nats-server failed: {str(exc).splitlines()[0]}"
            self._timeline.say(f"chaos: {self.error}")
        finally:
            self._down.set()
