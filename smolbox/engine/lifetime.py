"""Machine lifetime: expiry times, extending them, and the reaper that enforces them.

Why in the store and enforced in two places: a lifetime that only a live process
remembers is not honoured once that process is gone (E2B users' most common
complaint). The expiry is a column of the machine's row; ``smolbox serve`` runs a
:class:`Reaper` thread, and every embedded ``Engine.open`` reaps what expired while
nobody was watching, so a machine never outlives its timeout by more than the
reaper's period or the next engine start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from smolbox import errors
from smolbox.store import MachineRecord, Store
from smolbox.store.states import MachineState

log = logging.getLogger(__name__)

MAX_TIMEOUT_S = 30 * 86400.0
REAP_PERIOD_S = 1.0
REAPABLE = {MachineState.RUNNING, MachineState.PAUSED, MachineState.STOPPED,
            MachineState.ERROR}


def check_timeout(seconds: object) -> float:
    """A lifetime in seconds, validated (positive, at most 30 days)."""
    if (not isinstance(seconds, int | float) or isinstance(seconds, bool)
            or not 0 < seconds <= MAX_TIMEOUT_S):
        raise errors.ValidationError(
            f"timeout must be a number of seconds in (0, {int(MAX_TIMEOUT_S)}]",
            field="timeout", value=repr(seconds))
    return float(seconds)


def set_timeout(store: Store, vm: str, seconds: float | None) -> MachineRecord:
    """Expire ``vm`` ``seconds`` from now (None: never). Raises ``VMNotFoundError``,
    ``ValidationError``."""
    record = store.get_machine(vm)
    expires = None if seconds is None else time.time() + check_timeout(seconds)
    return store.update_machine(record.id, expires_at=expires)


def reap_expired(store: Store, *, delete: Callable[[str], object],
                 pause: Callable[[str], object], now: float | None = None) -> list[str]:
    """Delete (or pause, where the config asks) every machine past its expiry.

    Returns the ids handled. A machine that fails is logged and tried again on the
    next pass; one busy in another operation (``owner`` set) is left for later.
    """
    now = time.time() if now is None else now
    done: list[str] = []
    for record in store.list_machines(REAPABLE):
        if record.expires_at is None or record.expires_at > now or record.operation:
            continue
        try:
            if (record.config.get("on_timeout") == "pause"
                    and record.state == MachineState.RUNNING):
                pause(record.id)
                store.update_machine(record.id, expires_at=None)
            elif record.config.get("on_timeout") == "pause":
                store.update_machine(record.id, expires_at=None)
            else:
                delete(record.id)
            done.append(record.id)
        except errors.VMNotFoundError:
            continue
        except Exception:  # one machine must not stop the others from expiring
            log.warning("expiring machine %s failed", record.id, exc_info=True)
    return done


class Reaper:
    """A daemon thread running ``reap()`` every ``period`` seconds until closed."""

    def __init__(self, reap: Callable[[], object], period: float = REAP_PERIOD_S) -> None:
        self._reap = reap
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="smolbox-reaper", daemon=True)

    def start(self) -> Reaper:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self._reap()
            except Exception:  # the store may be busy or closing: try again next period
                log.warning("machine reaper pass failed", exc_info=True)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
