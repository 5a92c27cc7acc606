"""Upload an exported student (weights, config, model card) to the Hugging Face Hub.

The upload goes through huggingface_hub's API: ``HfApi.create_repo`` then ``upload_folder`` of the
export folder, so what lands on the Hub is byte for byte what ``hf-freqkd export`` wrote and
checked locally, for timm and transformers students alike. (timm's ``push_to_hf_hub`` and
transformers' ``push_to_hub`` would re-serialise the model and write their own README.)

The Trainer's own push (``push_to_hub=True``) would upload the Distiller checkpoint - student plus
method modules - at every save, and its ``training_args.bin`` pickles ``hub_token``. hf_freqkd
therefore takes the Hub settings out of the arguments when the trainer is built
(:meth:`HubSettings.take_from`): the Trainer never pushes, no checkpoint holds the token, and the
exported student is pushed once, at the end of the run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, HubUploadError
from .export import STUDENT_EXPORT_DIR, export_run, read_run_record


@dataclass
class HubSettings:
    """Where and how to push the exported student; taken out of ``TrainingArguments``."""

    push_to_hub: bool = False
    repo_id: str | None = None
    private: bool | None = None
    revision: str | None = None
    token: str | None = field(default=None, repr=False)

    @classmethod
    def take_from(cls, args: Any) -> HubSettings:
        """Read ``push_to_hub``, ``hub_model_id``, ``hub_private_repo``, ``hub_revision`` and ``hub_token``
        from ``args``; turn the Trainer's own push off and remove the token from ``args``.

        With ``push_to_hub`` the repo id and the token are checked now, before any training
        (:class:`~hf_freqkd.errors.ConfigError`).
        """
        settings = cls(
            push_to_hub=bool(getattr(args, "push_to_hub", False)),
            repo_id=getattr(args, "hub_model_id", None),
            private=getattr(args, "hub_private_repo", None),
            revision=getattr(args, "hub_revision", None),
            token=getattr(args, "hub_token", None),
        )
        args.push_to_hub = False
        args.hub_token = None
        if settings.push_to_hub:
            if settings.repo_id is None:
                # The Trainer's convention: the output folder's name, in the token owner's namespace.
                settings.repo_id = Path(args.output_dir).absolute().name
            check_repo_id(settings.repo_id, "hub_model_id")
            try:
                check_can_push(settings.token)
            except ConfigError as error:
                raise ConfigError(f"push_to_hub is true but {error}; or set push_to_hub: false") from None
        return settings

    def __getstate__(self) -> dict[str, Any]:
        # Never pickled with the token (a copy of the trainer or of these settings on disk).
        return {**dataclasses.asdict(self), "token": None}


def check_repo_id(repo_id: str, name: str = "--repo-id") -> str:
    """``USER/NAME`` or ``NAME`` (the token owner's namespace); a :class:`~hf_freqkd.errors.ConfigError` otherwise."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        if not isinstance(repo_id, str) or not repo_id or repo_id.startswith("/") or repo_id.endswith("/"):
            raise HFValidationError("")
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ConfigError(
            f"{name} = {repo_id!r} is not a valid Hub repo id: expected USER/NAME (letters, digits, '-', '_', '.')"
        ) from None
    return repo_id


def resolve_token(token: str | None = None) -> str | None:
    """The given token, else ``HF_TOKEN``, else the cached login (``hf auth login``)."""
    from huggingface_hub import get_token

    return token or get_token()


def check_can_push(token: str | None = None, export_dir: str | Path | None = None) -> str:
    """The token to push with; a :class:`~hf_freqkd.errors.ConfigError` when there is none or the Hub is switched off."""
    from huggingface_hub import constants

    kept = f"; the exported student stays in {export_dir}" if export_dir else ""
    if constants.is_offline_mode():
        raise ConfigError(f"HF_HUB_OFFLINE=1 is set, so nothing can be uploaded: unset it to push{kept}")
    token = resolve_token(token)
    if not token:
        raise ConfigError(
            f"no Hugging Face token: set HF_TOKEN, run `hf auth login`, or set hub_token in the config{kept}"
        )
    return token


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` as one commit; return the commit's URL.

    A malformed repo id, no token or offline mode raise :class:`~hf_freqkd.errors.ConfigError` before
    any request; a refused or failed upload raises :class:`~hf_freqkd.errors.HubUploadError`. Either
    way ``folder`` is left as it was, and the message says so.

    Args:
        folder: an export (``config.json``, ``model.safetensors``, ``README.md``).
        repo_id: ``USER/NAME`` or ``NAME`` (in the token owner's namespace).
        token: defaults to ``HF_TOKEN`` or the cached login.
        private: make a new repo private (no effect on an existing repo).
        revision: branch to commit to; created from the default branch if missing.
        commit_message: defaults to "Upload <folder name> with hf_freqkd".
    """
    from huggingface_hub import HfApi, constants, errors
    from huggingface_hub.errors import HfHubHTTPError

    from . import __version__

    folder = Path(folder)
    check_repo_id(repo_id)
    token = check_can_push(token, folder)
    endpoint = constants.ENDPOINT
    api = HfApi(endpoint=endpoint, token=token, library_name="hf_freqkd", library_version=__version__)
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            revision=revision,
            commit_message=commit_message or f"Upload {folder.name} with hf_freqkd",
        )
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            reason = f"the Hub at {endpoint} rejected the token (HTTP 401): check that it is valid and has write access"
        elif status == 403:
            reason = f"the token has no write access to '{repo_id}' on {endpoint} (HTTP 403)"
        else:
            reason = f"the Hub at {endpoint} answered HTTP {status}: {str(error).splitlines()[0]}"
        raise HubUploadError(
            f"{reason}; the upload did not complete and the exported student stays in {folder}"
        ) from None
    except (OSError, _transport_error(errors)) as error:
        raise HubUploadError(
            f"cannot reach the Hub at {endpoint} ({type(error).__name__}: {error}); "
            f"nothing was uploaded and the exported student stays in {folder}"
        ) from None
    return commit.commit_url


def _transport_error(errors_module: Any) -> type[Exception]:
    # The base error of the HTTP client huggingface_hub uses (requests, httpx or httpx2 by version).
    base = getattr(errors_module, "HTTPError", None)
    return base if isinstance(base, type) and issubclass(base, Exception) else OSError


def push_run(
    run_dir: str | Path,
    repo_id: str,
    *,
    checkpoint: str | None = None,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
) -> tuple[Path, str]:
    """Push the student of a run: its export as it is (exported first if missing); return (folder, URL).

    An existing export is uploaded unchanged, so a README.md edited by hand is what gets published;
    a missing model card is written from the run record.
    """
    from .model_card import write_model_card

    check_repo_id(repo_id)
    run_dir = Path(run_dir)
    folder = run_dir / (STUDENT_EXPORT_DIR if checkpoint is None else f"{STUDENT_EXPORT_DIR}-{Path(checkpoint).name}")
    if not (folder / "config.json").is_file():
        folder = export_run(run_dir, checkpoint=checkpoint)
    elif not (folder / "README.md").is_file():
        record = read_run_record(run_dir)
        if record is not None:
            config = (folder / "config.json").read_text()
            library = "timm" if '"architecture"' in config else "transformers"
            write_model_card(folder, record, library, model_name=run_dir.resolve().name)
    return folder, push_folder(
        folder, repo_id, token=token, private=private, revision=revision, commit_message=commit_message
    )


def push_trainer_student(
    trainer: Any,
    *,
    commit_message: str | None = None,
    token: str | None = None,
    revision: str | None = None,
    private: bool | None = None,
) -> str | None:
    """``DistillationTrainer.push_to_hub``: export the student with its card, upload it, return the URL."""
    from .export import export_student
    from .model_card import record_from_trainer

    if not trainer.is_world_process_zero():
        return None
    settings: HubSettings = trainer.hub_settings
    run_dir = Path(trainer.args.output_dir)
    repo_id = check_repo_id(settings.repo_id or run_dir.absolute().name, "hub_model_id")
    check_can_push(token or settings.token)  # before writing anything
    record = read_run_record(run_dir) or record_from_trainer(trainer)
    folder = export_student(trainer.student, run_dir / STUDENT_EXPORT_DIR, record, model_name=repo_id.split("/")[-1])
    return push_folder(
        folder,
        repo_id,
        token=token or settings.token,
        private=settings.private if private is None else private,
        revision=revision or settings.revision,
        commit_message=commit_message,
    )
