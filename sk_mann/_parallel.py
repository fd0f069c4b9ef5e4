"""Data-parallel meta-training on one machine (``meta_train(workers=n)``).

The calling process (rank 0) forks ``n - 1`` workers. Every rank holds an
identical copy of the network and optimiser and trains on its own equal share
of every batch, on one intra-op thread. After each backward pass the ranks
average their gradients (and losses) through shared memory, so each takes the
optimiser step of the whole batch and the copies stay identical, bit for bit:
every rank sums the same buffers in the same order.

Why processes: at the paper's batch of 16 a training step is 50 sequential
time steps of 16-row products and small fused kernels; two OpenMP threads in
one process synchronise around each of them, and two single-threaded
processes do not (what that gains, net of the exchange and of waiting for
the slower rank, is measured in ``benchmarks/results/speed.md`` and
``speed_notes.md``).

Signals go through pipes, one per ordered pair of ranks. A rank that fails
sends its traceback down its pipes; a rank that dies closes them, and its
peers read end-of-file instead of waiting forever.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import Any

import torch

_READY = b"\x00"


class PeerGone(Exception):
    """A peer closed its pipe: it exited (or was killed) mid-training."""

    def __init__(self, rank: int) -> None:
        super().__init__(rank)
        self.rank = rank


class PeerFailed(Exception):
    """A peer raised; ``message`` is its traceback."""

    def __init__(self, rank: int, message: str) -> None:
        super().__init__(rank, message)
        self.rank = rank
        self.message = message


def fork_available() -> bool:
    """Whether this platform can fork worker processes (Linux, macOS)."""
    return "fork" in multiprocessing.get_all_start_methods()


class Exchange:
    """Means of flat vectors over ranks, in shared memory; made before forking.

    Parameters
    ----------
    n_ranks : int
    size : int
        The longest vector exchanged.
    dtype : torch.dtype
    """

    def __init__(self, n_ranks: int, size: int, dtype: torch.dtype) -> None:
        ctx = multiprocessing.get_context("fork")
        self.n_ranks = n_ranks
        # Two buffers used in turn: a rank writes the next round's buffer only
        # after every peer has signalled this round, i.e. finished reading the
        # previous round's, so one signal per round is enough.
        self._buffers = torch.zeros(2, n_ranks, size, dtype=dtype).share_memory_()
        self._pipes = {
            (i, j): ctx.Pipe(duplex=False)
            for i in range(n_ranks)
            for j in range(n_ranks)
            if i != j
        }
        self._turn = 0
        self.rank = -1
        self._inbox: list[tuple[int, Any]] = []
        self._outbox: list[Any] = []
        # Called once a round when a peer is not ready yet: work to do while
        # waiting (the next batch's sampling), not a busy loop.
        self.idle: Callable[[], Any] | None = None

    def bind(self, rank: int) -> None:
        """Keep ``rank``'s pipe ends, close the others (each rank, after forking)."""
        self.rank = rank
        for (i, j), (reader, writer) in self._pipes.items():
            if j == rank:
                self._inbox.append((i, reader))
            else:
                reader.close()
            if i == rank:
                self._outbox.append(writer)
            else:
                writer.close()
        self._pipes = {}

    def close(self) -> None:
        """Close this rank's pipes: peers waiting on it read end-of-file."""
        for _, conn in self._inbox:
            conn.close()
        for conn in self._outbox:
            conn.close()
        for reader, writer in self._pipes.values():
            reader.close()
            writer.close()
        self._inbox, self._outbox, self._pipes = [], [], {}

    def _signal_and_wait(self) -> None:
        for conn in self._outbox:
            try:
                conn.send_bytes(_READY)
            except OSError:  # the peer is gone: its pipe to us says how
                pass
        if self.idle is not None and not all(c.poll() for _, c in self._inbox):
            self.idle()
        for peer, conn in self._inbox:
            try:
                message = conn.recv_bytes()
            except (EOFError, OSError):
                raise PeerGone(peer) from None
            if message != _READY:
                raise PeerFailed(peer, message.decode(errors="replace"))

    def mean(self, fill: Callable[[torch.Tensor], Any], size: int) -> torch.Tensor:
        """Mean over ranks of the vector that ``fill`` writes into its argument.

        ``fill`` receives this rank's row (length ``size``) of the shared
        buffer. Returns a new tensor, the same bits in every rank.
        """
        rows = self._buffers[self._turn, :, :size]
        self._turn ^= 1
        fill(rows[self.rank])
        self._signal_and_wait()
        out = rows[0].clone()
        for r in range(1, self.n_ranks):
            out += rows[r]
        return out.div_(self.n_ranks)

    def mean_gradients(
        self, params: Iterable[torch.Tensor], loss: torch.Tensor
    ) -> torch.Tensor:
        """Replace each parameter's gradient by its mean over ranks; mean loss."""
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        pieces = [g.reshape(-1) for g in grads] + [loss.detach().reshape(1)]
        size = sum(t.numel() for t in pieces)
        mean = self.mean(lambda row: torch.cat(pieces, out=row), size)
        offset = 0
        for g in grads:
            g.copy_(mean[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        return mean[-1]

    def fail(self, message: str) -> None:
        """Tell every peer this rank failed (best effort)."""
        for conn in self._outbox:
            try:
                conn.send_bytes(message.encode())
            except OSError:
                pass


def _compile_in_process() -> None:
    """Make torch's compiler build kernels in this process, not in its pools.

    A fork copies the parent's thread and process pools without the threads
    behind them: had the parent compiled enough to start every pool thread,
    the worker's compilation would wait forever on futures no thread serves.
    One compile thread means no pool (each worker has one core anyway).
    """
    config = sys.modules.get("torch._inductor.config")
    if config is not None:  # else inductor was never used: no pools to inherit
        config.compile_threads = 1


def _worker_main(rank: int, exchange: Exchange, run: Callable[[], None]) -> None:
    """Body of a forked worker: one intra-op thread, ``run()``, then exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 decides when to stop
    torch.set_num_threads(1)
    _compile_in_process()
    exchange.bind(rank)
    code = 0
    try:
        run()
    except PeerGone:  # rank 0 stopped (or died): nothing left to do
        pass
    except BaseException:
        exchange.fail(f"worker {rank} failed:\n{traceback.format_exc()}")
        code = 1
    finally:
        exchange.close()
        # No atexit handlers, no flushing of stdio buffers copied at the fork.
        os._exit(code)


def run_parallel(
    exchange: Exchange,
    run_rank0: Callable[[], Any],
    run_worker: Callable[[int], Callable[[], None]],
) -> Any:
    """Fork the workers, run rank 0 here, and clean up however it ends.

    ``run_worker(rank)`` is called in the parent before each fork and returns
    what that worker runs. Errors of a worker are raised here as
    ``RuntimeError`` with the worker's traceback.
    """
    ctx = multiprocessing.get_context("fork")
    threads = torch.get_num_threads()
    procs = []
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        for rank in range(1, exchange.n_ranks):
            proc = ctx.Process(
                target=_worker_main,
                args=(rank, exchange, run_worker(rank)),
                daemon=True,
                name=f"sk_mann-worker-{rank}",
            )
            proc.start()
            procs.append(proc)
        exchange.bind(0)
        torch.set_num_threads(1)
        try:
            return run_rank0()
        except PeerFailed as exc:
            raise RuntimeError(
                f"meta_train(workers={exchange.n_ranks}): {exc.message}"
            ) from None
        except PeerGone as exc:
            proc = procs[exc.rank - 1]
            proc.join(timeout=5)
            raise RuntimeError(
                f"meta_train(workers={exchange.n_ranks}): worker {exc.rank} exited "
                f"(exit code {proc.exitcode}) before training ended; it may have "
                "been killed for memory. Train with fewer workers, or workers=1."
            ) from None
    finally:
        exchange.close()
        torch.set_num_threads(threads)
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join()
