"""Run folders of a multi-node run: one folder on a disk every node shares, or one on each node's own disk.

A run of several nodes (``accelerate launch --num_machines``, ``torchrun --nnodes``) finds out which
when the trainer starts (:meth:`Nodes.detect`): the main process writes a probe file into its
``output_dir``, and the first process of every other node looks for it in the ``output_dir`` it was
given.

- **Shared** (every node sees the probe): as on one node, the main process alone locks the folder,
  writes the checkpoints (every process adds its ``rng_state_<rank>.json``) and the log.
- **Node-local** (only node 0 sees it): the first process of each node is that node's *writer*: it
  locks its node's folder, clears it on ``--overwrite`` and writes complete checkpoints into it
  (accelerate's ``save_on_each_node``); each checkpoint holds the ``rng_state_<rank>.json`` of that
  node's processes. ``log.jsonl``, sample grids, the monitor and trackers stay on node 0's folder.
- A folder some nodes share and others do not is refused in one line, and so is a sharded run
  (``loop.fsdp``) on node-local folders: the main process alone writes its gathered optimiser states
  (:func:`~distar.train.distributed.keep_optimizer_states`), so the other nodes' checkpoints would lack them.

Before any of this, ``distar train`` checks its inputs on every process, and a refusal on one node (its
own disk may hold another run, or lack the prompt file) reaches every node (:func:`agree`).

On ``--resume``, each writer resolves the checkpoint in its own folder and every process learns the
step each node found: when they differ, every process stops with one line instead of waiting forever
for nodes that resume elsewhere.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

from distar.config import ConfigError
from distar.errors import UserError
from distar.train import checkpoint as ckpt

if TYPE_CHECKING:
    from accelerate import Accelerator

T = TypeVar("T")

#: The probe file's name is this prefix and a token drawn for the run.
PROBE_PREFIX = ".distar-probe-"


@dataclass(frozen=True)
class Nodes:
    """Where this process stands among the run's nodes, and who writes the run folder it sees."""

    count: int  #: nodes in the run
    node: int  #: this process's node
    shared: bool  #: whether every node sees one run folder
    writers: tuple[int, ...]  #: the rank that writes each node's run folder (rank 0 for all when shared)
    rank: int  #: this process's rank

    @property
    def writer(self) -> bool:
        """Whether this process writes the run folder it sees (checkpoints, lock, ``--overwrite``)."""
        return self.writers[self.node] == self.rank

    @classmethod
    def detect(cls, accelerator: Accelerator, output_dir: str | Path, *, sharded: bool = False) -> Nodes:
        """The layout of this run (collective: every process calls it). Node-local folders turn on
        accelerate's ``save_on_each_node``. One-line :class:`~distar.config.ConfigError` for a mixed
        layout, or a ``sharded`` run (``loop.fsdp``) on node-local folders."""
        rank = accelerator.process_index
        if accelerator.num_processes == 1:
            return cls(count=1, node=0, shared=True, writers=(0,), rank=0)
        from accelerate.utils import broadcast_object_list, gather_object

        firsts = node_firsts(gather_object([accelerator.local_process_index]))
        node = sum(first <= rank for first in firsts) - 1
        if len(firsts) == 1:
            return cls(count=1, node=0, shared=True, writers=(0,), rank=rank)
        token = [uuid.uuid4().hex if accelerator.is_main_process else None]
        broadcast_object_list(token)
        probe = Path(output_dir) / f"{PROBE_PREFIX}{token[0]}"
        if accelerator.is_main_process:
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.touch()
        accelerator.wait_for_everyone()
        seen = [s for s in gather_object([probe.is_file() if rank in firsts else None]) if s is not None]
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            probe.unlink()
        shared = folder_layout(seen, output_dir)
        if not shared and sharded:
            raise ConfigError(
                f"output_dir: {output_dir} is not shared by the {len(firsts)} nodes; loop.fsdp writes its optimiser "
                "states from the main process only: give every node the same shared folder"
            )
        if shared:
            return cls(count=len(firsts), node=node, shared=True, writers=(0,) * len(firsts), rank=rank)
        accelerator.project_configuration.save_on_each_node = True
        return cls(count=len(firsts), node=node, shared=False, writers=tuple(firsts), rank=rank)

    def each_writer(self, accelerator: Accelerator, action: Callable[[], T]) -> list[T]:
        """``action()`` run by each node's writer (once when the folder is shared); every process gets
        their results, one per node, or the first writer's one-line :class:`~distar.config.ConfigError`
        (so that all processes lock, resume and fail alike)."""
        outcome: tuple = (None, None)
        if self.writer:
            try:
                outcome = (action(), None)
            except ConfigError as err:
                outcome = (None, str(err))
        if accelerator.num_processes == 1:
            outcomes = [outcome]
        else:
            from accelerate.utils import gather_object

            outcomes = gather_object([outcome])
        for _, error in outcomes:
            if error is not None:
                raise ConfigError(error)
        return [outcomes[writer][0] for writer in self.writers]

    def run(self, accelerator: Accelerator, action: Callable[[], T]) -> T:
        """``action()`` run by the writer of this process's folder (see :meth:`each_writer`): its result."""
        return self.each_writer(accelerator, action)[self.node]

    def resolve(self, accelerator: Accelerator, resume: str, output_dir: str | Path) -> Path | None:
        """The checkpoint this process resumes from (:func:`~distar.train.checkpoint.resolve_checkpoint` in
        its node's folder), after checking that every node found the same step."""

        def find() -> tuple[str, int] | None:
            path = ckpt.resolve_checkpoint(resume, output_dir)
            return None if path is None else (str(path), ckpt.read_trainer_state(path)["step"])

        found = self.each_writer(accelerator, find)
        steps = [None if f is None else f[1] for f in found]
        if len(set(steps)) > 1:
            each = ", ".join(f"node {n}: {'none' if s is None else f'step {s}'}" for n, s in enumerate(steps))
            raise ckpt.CheckpointError(
                f"--resume {resume}: the nodes' run folders hold different checkpoints ({each}); "
                "give every node the same checkpoint, or start anew with --overwrite"
            )
        mine = found[self.node]
        return None if mine is None else Path(mine[0])


def agree(accelerator: Accelerator | None, check: Callable[[], T]) -> T:
    """``check()``'s result, once every process of ``accelerator`` has run its own ``check``: when any
    process's check refuses (one line: :class:`~distar.errors.UserError`, :class:`~distar.config.ConfigError`,
    ``FileNotFoundError``), every process raises the first refusal as a one-line UserError naming its rank,
    or as it is when every process refused alike. Without ``accelerator``, or with one process, ``check()``."""
    if accelerator is None or accelerator.num_processes == 1:
        return check()
    from accelerate.utils import gather_object

    result, error = None, None
    try:
        result = check()
    except (UserError, ConfigError, FileNotFoundError) as err:
        error = str(err)
    messages = gather_object([error])
    refusals = [(rank, message) for rank, message in enumerate(messages) if message is not None]
    if len(set(messages)) == 1 and refusals:  # every process refused alike: the message as one process says it
        raise UserError(refusals[0][1])
    if refusals:
        raise UserError("rank {}: {}".format(*refusals[0]))
    return result


def node_firsts(local_ranks: list[int]) -> list[int]:
    """The first rank of each node, given every rank's local rank (launchers number a node's processes
    consecutively)."""
    return [rank for rank, local in enumerate(local_ranks) if local == 0]


def folder_layout(seen: list[bool], output_dir: str | Path) -> bool:
    """Whether the run folder is shared, from whether each node's first process saw node 0's probe
    (one-line :class:`~distar.config.ConfigError` when only some nodes did)."""
    if all(seen):
        return True
    if not any(seen[1:]):
        return False
    sharing = ", ".join(str(n) for n, s in enumerate(seen) if s)
    raise ConfigError(
        f"output_dir: {output_dir} is one folder for nodes {sharing} but another for the rest; give every node "
        "the same shared folder, or each node a folder of its own"
    )
