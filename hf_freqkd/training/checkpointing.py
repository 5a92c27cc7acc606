"""Atomic checkpoints: ``checkpoint-N`` either does not exist or is complete.

The Trainer writes ``checkpoint-N`` file by file; a process killed half-way would leave a folder
that ``resume_from_checkpoint=True`` picks as the latest and then fails to load. :class:`AtomicCheckpoints`
lets the Trainer write the checkpoint into a staging folder and renames it into place once complete
(a directory rename is atomic); older checkpoints are rotated away only after the new one is in place.
"""

from __future__ import annotations

import os
import shutil

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

# Checkpoints are written here first and renamed into place once complete.
CHECKPOINT_STAGING_DIR = ".staging-checkpoints"


class AtomicCheckpoints:
    """Mix into a ``transformers.Trainer`` subclass (ahead of ``Trainer``) to save checkpoints atomically."""

    _checkpoint_staging_dir: str | None = None

    # Private Trainer override: _save_checkpoint asks it for the folder it writes into, and there
    # is no public hook that runs before the checkpoint's files are written.
    def _get_output_dir(self, trial) -> str:
        staging = self._checkpoint_staging_dir
        return staging if staging is not None else super()._get_output_dir(trial)

    # Private Trainer override: the only place a checkpoint is written (callbacks' on_save runs after).
    def _save_checkpoint(self, model, trial) -> None:
        """Let the Trainer write the checkpoint into a staging folder, then rename it into place."""
        run_dir = super()._get_output_dir(trial)
        staging_root = os.path.join(run_dir, CHECKPOINT_STAGING_DIR)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged, final = os.path.join(staging_root, name), os.path.join(run_dir, name)
        if self.args.should_save and os.path.exists(staged):
            shutil.rmtree(staged)  # left by a run killed while saving: incomplete by construction
        self.accelerator.wait_for_everyone()
        self._checkpoint_staging_dir = staging_root
        try:
            super()._save_checkpoint(model, trial)
        except OSError as error:  # disk full, quota, permissions: say what is safe and how to go on
            if self.args.should_save:
                shutil.rmtree(staged, ignore_errors=True)
            raise checkpoint_save_error(error, final, run_dir) from None
        finally:
            self._checkpoint_staging_dir = None
        self.accelerator.wait_for_everyone()  # every rank has written its share (e.g. its RNG state)
        if self.args.should_save:
            best = self.state.best_model_checkpoint
            if best is not None and os.path.dirname(os.path.abspath(best)) == os.path.abspath(staging_root):
                self.state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
                self.state.save_to_json(os.path.join(staged, "trainer_state.json"))
            sync_folder(staged)
            replaced = None
            if os.path.exists(final):  # saving the same step again (resumed from an earlier checkpoint)
                replaced = os.path.join(staging_root, f"replaced-{name}")
                if os.path.exists(replaced):
                    shutil.rmtree(replaced)
                os.rename(final, replaced)
            os.rename(staged, final)
            sync_folder(run_dir, files=False)
            if replaced is not None:
                shutil.rmtree(replaced)
            self._rotate_final_checkpoints(run_dir)
        self.accelerator.wait_for_everyone()

    def _rotate_final_checkpoints(self, run_dir: str) -> None:
        try:
            from transformers.trainer_utils import rotate_checkpoints
        except ImportError:  # transformers < 5 has it as a Trainer method
            self._rotate_checkpoints(use_mtime=True, output_dir=run_dir)
            return
        rotate_checkpoints(
            output_dir=run_dir,
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=True,
        )


def checkpoint_save_error(error: OSError, folder: str, run_dir: str) -> OSError:
    """The error of a failed save: what was removed, which checkpoints are intact, how to go on."""
    kept = sorted(
        (name for name in os.listdir(run_dir) if name.startswith(f"{PREFIX_CHECKPOINT_DIR}-")),
        key=lambda name: int(name.rsplit("-", 1)[-1]) if name.rsplit("-", 1)[-1].isdigit() else -1,
    ) if os.path.isdir(run_dir) else []
    earlier = f"{', '.join(kept)} {'is' if len(kept) == 1 else 'are'} intact" if kept else "there is no earlier checkpoint"
    return OSError(
        error.errno,
        f"could not save checkpoint '{folder}': {error.strerror or error}; the partial checkpoint was removed and "
        f"{earlier}. Free disk space (or choose another output_dir) and resume with resume_from_checkpoint=true",
    )


def sync_folder(folder: str, files: bool = True) -> None:
    """fsync ``folder``'s files and the folder itself, so a rename after this survives a power loss."""
    if files:
        for entry in os.scandir(folder):
            if entry.is_file():
                with open(entry.path, "rb") as handle:
                    os.fsync(handle.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
