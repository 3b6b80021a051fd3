"""Where a process spends its time, phase by phase, without a sampling profiler.

:class:`PhaseClock` wraps named functions (``Queue.dequeue_any``, ``jobs.finish_jobs`` ...)
so that each call's time goes to its phase. Time is *exclusive*: a phase nested in another
(SQL inside a task) is taken out of the outer one, so the phases of a thread add up to its
wall time and nothing is counted twice. Each thread keeps its own stack; time no wrapped
function claims goes to the thread's base phase (e.g. "glue"). Both wall time and the
thread's CPU time are kept, because on a shared machine CPU time is the steadier figure.

It also counts Redis round trips (a command or a whole pipeline is one) and SQL statements
and commits, the usual suspects when a job costs milliseconds outside the model.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any


class PhaseClock:
    def __init__(self, base: str = "glue") -> None:
        self.base = base
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.counts: Counter[str] = Counter()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._undo: list[Callable[[], None]] = []
        self._epoch = 0
        #: Only threads inside :meth:`measure` (and the threads they start) are counted.
        self.active = False

    # -- the stack -------------------------------------------------------------------------
    def _stack(self) -> list[Any]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            # Other threads (a decode thread, the heartbeat) count only inside wrapped
            # functions, and under their own name: they overlap the main thread.
            main = threading.current_thread() is threading.main_thread()
            self._local.suffix = "" if main else f" [{threading.current_thread().name} thread]"
            base = self.base if main else None
            stack = self._local.stack = [[base, time.perf_counter(), time.thread_time()]]
        return stack

    def _charge(self, top: list[Any]) -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        if getattr(self._local, "epoch", None) != self._epoch:  # marks from before the last reset
            self._local.epoch = self._epoch
            for entry in self._stack():
                entry[1], entry[2] = wall, cpu
            return
        if self.active and top[0] is not None:
            with self._lock:
                self.wall[top[0]] += wall - top[1]
                self.cpu[top[0]] += cpu - top[2]
        top[1], top[2] = wall, cpu

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        stack = self._stack()
        self._charge(stack[-1])
        stack.append([name + self._local.suffix, time.perf_counter(), time.thread_time()])
        try:
            yield
        finally:
            self._charge(stack.pop())
            stack[-1][1], stack[-1][2] = time.perf_counter(), time.thread_time()

    def reset(self) -> None:
        with self._lock:
            self.wall.clear()
            self.cpu.clear()
            self.counts.clear()
            self._epoch += 1

    def snapshot(self) -> tuple[dict[str, float], dict[str, float], Counter[str]]:
        """(wall, cpu, counts) so far, this thread's running phase charged up to now."""
        self._charge(self._stack()[-1])
        with self._lock:
            return dict(self.wall), dict(self.cpu), Counter(self.counts)

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        """Count from here: what happened before (start-up, submits) is not the subject."""
        self.reset()
        self.active = True
        try:
            yield
        finally:
            self._charge(self._stack()[0])
            self.active = False

    # -- wrapping --------------------------------------------------------------------------
    def wrap(self, owner: Any, attribute: str, phase: str, *, context_manager: bool = False) -> None:
        """Charge every call of ``owner.attribute`` to ``phase``; a missing attribute is skipped.

        ``context_manager``: the function returns one, and its enter and exit are what cost.
        """
        static = inspect.getattr_static(owner, attribute, None)
        if static is None:
            return
        kind = type(static) if isinstance(static, (classmethod, staticmethod)) else None
        function = static.__func__ if kind else static

        if context_manager:

            @functools.wraps(function)
            @contextlib.contextmanager
            def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
                with self.phase(phase):
                    manager = function(*args, **kwargs)
                    value = manager.__enter__()
                try:
                    yield value
                except BaseException as exc:
                    with self.phase(phase):
                        if not manager.__exit__(type(exc), exc, exc.__traceback__):
                            raise
                else:
                    with self.phase(phase):
                        manager.__exit__(None, None, None)

        else:

            @functools.wraps(function)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                with self.phase(phase):
                    return function(*args, **kwargs)

        setattr(owner, attribute, kind(wrapper) if kind else wrapper)
        self._undo.append(lambda: setattr(owner, attribute, static))

    def wrap_module(self, module: Any, phase: str, *, only: Callable[[str], bool] = lambda _: True) -> None:
        """Every public function defined in ``module`` (not the ones it imports)."""
        for name, value in list(vars(module).items()):
            own = inspect.isfunction(value) and value.__module__ == module.__name__
            if own and not name.startswith("_") and only(name):
                self.wrap(module, name, phase)

    def count_round_trips(self) -> None:
        """One Redis round trip per command sent alone or per pipeline executed."""
        from redis.client import Pipeline, Redis

        self._count(Redis, "execute_command", "redis round trips", skip=lambda obj: isinstance(obj, Pipeline))
        self._count(Pipeline, "execute", "redis round trips")

    def count_sql(self, engine: Any) -> None:
        from sqlalchemy import event

        def statement(*_: Any) -> None:
            if self.active:
                self.counts["sql statements"] += 1

        def commit(*_: Any) -> None:
            if self.active:
                self.counts["sql commits"] += 1

        event.listen(engine, "before_cursor_execute", statement)
        event.listen(engine, "commit", commit)
        self._undo.append(lambda: event.remove(engine, "before_cursor_execute", statement))
        self._undo.append(lambda: event.remove(engine, "commit", commit))

    def _count(
        self, owner: type, attribute: str, counter: str, skip: Callable[[Any], bool] = lambda _: False
    ) -> None:
        original = owner.__dict__[attribute]

        @functools.wraps(original)
        def wrapper(obj: Any, *args: Any, **kwargs: Any) -> Any:
            if self.active and not skip(obj):
                self.counts[counter] += 1
            return original(obj, *args, **kwargs)

        setattr(owner, attribute, wrapper)
        self._undo.append(lambda: setattr(owner, attribute, original))

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()
