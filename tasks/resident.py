"""The resident policy: the DeepSpeed engine (weights and optimizer state) and the rollout's generator kept loaded
across stages and iterations in the training flow's process (trainer.resident), instead of loaded from the last
checkpoint by every stage; the training datasets too, instead of loaded by every rollout.

Exactness: what is held is tagged with the committed update whose checkpoint it equals (the commit record), and a
stage uses it only for that checkpoint: the engine after this process committed the update that trained it, the
generator's weights after loading that checkpoint or copying the engine's. A stage that fails (or is killed) drops
everything held, so its retry, or the resumed run, loads the committed checkpoint as before. Every stage still
commits its tables and every update its checkpoint, so a run resumes anywhere; the iterations a process runs
resident give the same rollouts, advantages and checkpoints as loading them (tests/test_flows_train.py).

Only the training flow holds a session (`resident_session`); stages run as deployments (flows/stage.py) and
updates on several ranks or nodes load their checkpoint, as does everything with residency off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from schemas.config import RunConfig

if TYPE_CHECKING:  # torch, transformers and DeepSpeed load with the stages, not with every command
    from hicra.data import Source
    from hicra.generate import HFGenerator
    from hicra.trainer import PolicyTrainer
    from warehouse.store import StageCommit


def _tag(update: StageCommit | None) -> tuple | None:
    """A committed update's identity: its iteration and commit time (None: no update yet, the base model)."""
    return None if update is None else (update.iteration, update.committed_at)


class ResidentPolicy:
    """What one training flow holds for its run (one warehouse, one run id): the engine and the HF generator, each
    with the `_tag` of the committed update whose checkpoint its weights are, and the training mixture."""

    def __init__(self, warehouse: str, run_id: str):
        self.warehouse, self.run_id = warehouse, run_id
        self.trainer: PolicyTrainer | None = None
        self.trainer_update: tuple | None = None
        self.hf_generator: HFGenerator | None = None
        self.generator_update: tuple | None = None
        self.mixture: list[Source] | None = None

    def serves(self, config: RunConfig) -> bool:
        return (config.run.warehouse, config.run.id) == (self.warehouse, self.run_id)

    def take_trainer(self, update: StageCommit | None) -> PolicyTrainer | None:
        """The engine holding the checkpoint of the committed update `update` (None: iteration 0 has none), taken out
        (the update changes it; `keep_trainer` gives it back once committed); else None, and the caller loads."""
        trainer, self.trainer = self.trainer, None
        return trainer if update is not None and self.trainer_update == _tag(update) else None

    def keep_trainer(self, trainer: PolicyTrainer, update: StageCommit) -> None:
        """Hold `trainer` after its update committed as `update` (its checkpoint is the engine's state)."""
        self.trainer, self.trainer_update = trainer, _tag(update)

    def generator(self, update: StageCommit | None, load: Callable[[], HFGenerator]) -> HFGenerator:
        """A generator with the weights of the checkpoint of the committed update `update` (None: the base model):
        the one held if it has them, else the held one with the held engine's weights copied in when the engine
        holds that checkpoint, else `load()` (which loads the checkpoint's folder), then held."""
        tag = _tag(update)
        if self.hf_generator is None or self.generator_update != tag:
            if self.hf_generator is not None and self.trainer is not None and tag == self.trainer_update:
                self.trainer.copy_weights_to(self.hf_generator.model)
            else:
                self.hf_generator = None  # free the old weights before loading new ones
                self.hf_generator = load()
            self.generator_update = tag
        return self.hf_generator

    def training_mixture(self, load: Callable[[], list[Source]]) -> list[Source]:
        """The run's training sources, loaded once (`load()`): a dataset that changes under a running run is not
        read again (a later start of the run checks that its size is still the one the last checkpoint saved)."""
        if self.mixture is None:
            self.mixture = load()
        return self.mixture

    def drop(self) -> None:
        self.trainer = self.trainer_update = self.hf_generator = self.generator_update = None


_session: ResidentPolicy | None = None


def resident(config: RunConfig) -> ResidentPolicy | None:
    """This process's resident policy for the run of `config`, or None: no training flow holds one here (a stage
    run as a deployment, residency off) or it is another run's."""
    return _session if _session is not None and _session.serves(config) else None


def drop() -> None:
    """Forget everything held (after a failed stage: its retry and later stages load committed checkpoints)."""
    if _session is not None:
        _session.drop()


@contextmanager
def resident_session(config: RunConfig) -> Iterator[None]:
    """Hold the policy across the stages run in this process while the block runs (the training flow's
    iterations), when `trainer.resident` is on and the update runs on one rank of one node with ZeRO stage 0-2
    (stage 3 partitions the weights the generator copies); everything held is freed when the block ends."""
    global _session
    trainer = config.trainer
    if not trainer.resident or trainer.num_processes > 1 or trainer.nodes.count > 1 or trainer.zero_stage == 3:
        yield
        return
    previous, _session = _session, ResidentPolicy(config.run.warehouse, config.run.id)
    try:
        yield
    finally:
        _session = previous
