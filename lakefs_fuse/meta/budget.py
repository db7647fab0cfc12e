"""How long one request may wait for the metadata service, across all the calls it makes.

A FUSE request can make several metadata calls (a lookup then a command; a FORGET releases
many inodes; ``release`` commits and then reads the attributes back). Each call alone gives up
after ``--meta-timeout``; without a shared bound a request made of *n* calls could block its
caller for *n* timeouts while the cluster is down. :func:`metadata_budget` opens a budget around
a request: every metadata call made inside it draws on the same ``--meta-timeout`` of waiting,
and once it is spent the next call fails at once with EIO.

What counts is time spent *inside* metadata calls, not wall-clock time since the request began,
so a request that first uploads data for a while (a truncate commits buffered writes) does not
lose its metadata time to the upload.

The budget travels in a context variable. trio copies context variables into every task it
starts, including background tasks started while serving a request (the writer's seals, which
outlive it and retry on their own schedule); those must not inherit a budget that may already be
spent. So a budget binds only the task that opened it and tasks of nurseries opened inside the
budget's block, which end before it does (:meth:`Budget.covers`); a task started into a nursery
that was already open -- one that outlives the request -- is free of it.

This module owns that rule only; ``remote.py`` draws on the budget. It imports trio and nothing
of the project.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import trio


class Budget:
    """Seconds of metadata waiting left to one request (``None``: the service's own timeout)."""

    __slots__ = ("owner", "seconds", "spent", "_outer")

    def __init__(self, owner: trio.lowlevel.Task, seconds: float | None):
        self.owner = owner
        self.seconds = seconds
        self.spent = 0.0
        self._outer = frozenset(owner.child_nurseries)  # open before the budget: they outlive it

    def left(self, default: float) -> float:
        """Seconds still available; ``default`` is the size of a budget opened without one."""
        total = default if self.seconds is None else self.seconds
        return total - self.spent

    def charge(self, seconds: float) -> None:
        self.spent += seconds

    def covers(self, task: trio.lowlevel.Task) -> bool:
        """True for the opening task and tasks of nurseries it opened inside the budget (they
        end before it does); false for tasks started into a nursery that outlives the request."""
        nursery: trio.Nursery | None = None
        current: trio.lowlevel.Task | None = task
        while current is not None:
            if current is self.owner:
                return nursery is None or nursery not in self._outer
            nursery = current.parent_nursery
            current = nursery.parent_task if nursery is not None else None
        return False


_current: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("metadata_budget", default=None)


@contextlib.contextmanager
def metadata_budget(seconds: float | None = None) -> Iterator[Budget]:
    """Let every metadata call inside the block share one budget of ``seconds`` of waiting
    (default: the metadata service's ``op_timeout``, i.e. ``--meta-timeout``)."""
    budget = Budget(trio.lowlevel.current_task(), seconds)
    token = _current.set(budget)
    try:
        yield budget
    finally:
        _current.reset(token)


def current_budget() -> Budget | None:
    """The budget binding the calling task, if any."""
    budget = _current.get()
    if budget is None or not budget.covers(trio.lowlevel.current_task()):
        return None
    return budget
