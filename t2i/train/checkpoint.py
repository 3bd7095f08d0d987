"""Orbax checkpoints with three named items: state, data iterator and config JSON.

Saves are asynchronous (training goes on while the arrays are written); keep-N
prunes old steps. Restoring takes the abstract state of the *current* run, whose
shardings may come from another mesh, so a run saved on 8 devices resumes on 1.
Orbax writes each step into a temporary folder and renames it when complete, so an
interrupted save never leaves a checkpoint that looks finished.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from t2i.train.state import state_to_tree, tree_to_state


class Checkpointer:
    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_names=("state", "data", "config"),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any | None, config_json: dict, force: bool = False) -> bool:
        items = dict(state=ocp.args.StandardSave(state_to_tree(state)), config=ocp.args.JsonSave(config_json))
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, step: int | None, abstract_state: Any, data_iterator: Any | None = None) -> Any:
        """Restores `state` (laid out as `abstract_state`) and, in place, the iterator."""
        step = self.latest_step() if step is None else step
        items = dict(state=ocp.args.StandardRestore(state_to_tree(abstract_state)))
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return tree_to_state(restored["state"])

    def restore_part(self, step: int, abstract_part: dict) -> dict:
        """Restores only the named parts of the saved state (e.g. `{"ema_params": ...}`,
        laid out as given), without the rest's shapes: sampling from a checkpoint
        needs neither the optimizer state nor its structure."""
        reader = ocp.CheckpointManager(
            self.directory, item_names=("state",), item_handlers={"state": ocp.PyTreeCheckpointHandler()}
        )
        try:
            restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_part)
            args = ocp.args.PyTreeRestore(abstract_part, restore_args=restore_args, partial_restore=True)
            return reader.restore(step, args=ocp.args.Composite(state=args))["state"]
        finally:
            reader.close()

    def restore_config(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        return self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the target shardings, for a restore onto any mesh."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
