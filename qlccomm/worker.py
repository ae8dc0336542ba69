"""Where a collective runs: one background thread per process group, calls in submission order.

`async_op=True` calls (and the DDP hook) are queued on their group's thread and
return at once with a `CollectiveWork`; the caller keeps computing while the
thread codes and moves the data (the numba kernels release the GIL, gloo moves
bytes on its own threads, torch ops release it too).  `async_op=False` calls run
in the caller's thread when nothing is queued on the group, else behind the
queued calls, so calls reach the wire in the order they were made on every rank.

On CUDA/NPU the group thread runs on a side stream of its own, ordered after the
caller's stream with an event (no host sync), and `wait()` orders the caller's
current stream after the call's work, again with an event.
"""
from __future__ import annotations

import queue
import threading

import torch


def _device_module(device: torch.device):
    """torch.cuda / torch.npu for accelerator tensors, None on the CPU."""
    if device.type == "cpu":
        return None
    return getattr(torch, device.type, None)


class CollectiveWork:
    """The handle of an `async_op=True` call: `wait()`, `get_future()`, `is_completed()`.

    The future's value is the collective's output tensor; `wait()` re-raises the
    call's exception (the same type on every rank for a disagreement) and, for
    accelerator tensors, orders the caller's current stream after the call's work.
    """

    def __init__(self, future: torch.futures.Future, device_mod=None, events: dict | None = None):
        self._future = future
        self._mod = device_mod
        self._events = events if events is not None else {}

    def wait(self, timeout=None) -> bool:
        self._future.wait()
        if self._mod is not None and "done" in self._events:
            self._mod.current_stream().wait_event(self._events["done"])
        return True

    def get_future(self) -> torch.futures.Future:
        return self._future

    def is_completed(self) -> bool:
        return self._future.done()


class GroupWorker:
    """A daemon thread that runs one group's calls in order."""

    def __init__(self, name: str):
        self._jobs: queue.Queue = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            fn, fut = self._jobs.get()
            value = None
            try:
                value = fn()
            except BaseException as e:  # noqa: BLE001 - handed to the caller's future
                self._done()
                fut.set_exception(e)
            else:
                self._done()
                fut.set_result(value)
            del fn, fut, value      # the finished call's tensors and works are not kept until the next

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1

    def submit(self, fn) -> torch.futures.Future:
        fut = torch.futures.Future()
        with self._lock:
            self._pending += 1
        self._jobs.put((fn, fut))
        return fut

    def idle(self) -> bool:
        with self._lock:
            return self._pending == 0


_SIDE_STREAMS: dict[str, object] = {}


def _side_stream(mod, device: torch.device):
    if str(device) not in _SIDE_STREAMS:
        _SIDE_STREAMS[str(device)] = mod.Stream(device=device)
    return _SIDE_STREAMS[str(device)]


def run(worker: GroupWorker, fn, value: torch.Tensor, async_op: bool, device: torch.device):
    """Run `fn()` (which fills `value`) as a call of `worker`'s group.

    async_op: returns a CollectiveWork at once.  Otherwise returns None when done,
    raising the call's exception in the caller's thread.
    """
    work = submit_work(worker.submit, fn, value, device, inline=not async_op and worker.idle())
    if async_op:
        return work
    work.wait()
    return None


def submit_work(submit, fn, value, device: torch.device, inline: bool = False) -> CollectiveWork:
    """`fn()` (which fills `value`) handed to `submit(job) -> Future`, ordered on accelerators
    after the caller's current stream (and the caller's later work after it, by `wait()`).
    `inline` (CPU tensors only): run it here and now instead."""
    mod = _device_module(device)
    if mod is None and inline:
        fut = torch.futures.Future()
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - re-raised by wait(), like a submitted job's
            fut.set_exception(e)
        else:
            fut.set_result(value)
        return CollectiveWork(fut)
    events: dict = {}
    if mod is not None:
        events["ready"] = mod.Event()
        events["ready"].record()

    def job():
        if mod is None:
            fn()
        else:
            side = _side_stream(mod, device)
            side.wait_event(events["ready"])
            with mod.stream(side):
                fn()
            events["done"] = mod.Event()
            events["done"].record(side)
        return value

    return CollectiveWork(submit(job), mod, events)
