"""Uploads: saving a pipeline or LoRA folder with its card ([`save_pipeline_for_hub`]), pushing a folder
([`push_folder_to_hub`]), training-time pushes ([`CheckpointPusher`]) and fetching a pushed checkpoint back
([`download_checkpoint`]).

Every function writes its files locally first and uploads the folder afterwards, so a failed upload never loses work:
the folder stays complete and the failure is raised as one [`HubPushError`] naming the repo and the cause (or, during
training, logged by [`CheckpointPusher`] and retried at the next save).

Repo layout written by a run with `hub_strategy="checkpoint"`:

    README.md, model_index.json, unet/, vae/, ...     (or pytorch_lora_weights.safetensors for LoRA)
    checkpoints/checkpoint_<epoch>/                    accelerate `save_state` output + trainer_state.json
"""

from __future__ import annotations

import logging
import os
import re

from ..checkpointing import CHECKPOINT_PREFIX, TRAINER_STATE_NAME
from .cards import _HUB_ID, SafeDiffusionCardInfo, write_model_card
from .errors import HubDownloadError, HubPushError, _describe_failure, _network_error_types

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR_IN_REPO = "checkpoints"
HUB_STRATEGIES = ("end", "every_save", "checkpoint")


def save_pipeline_for_hub(pipeline, folder: str, *, lora: bool | None = None, fuse: bool = False,
                          card_info: SafeDiffusionCardInfo | None = None, adapter_name: str = "default") -> str:
    r"""
    Save a trained pipeline in the formats the ecosystem loads without this library, always with a model card,
    safetensors only; returns `folder`. The files are written by the pipeline's own saving methods:

    - a library pipeline ([`~trl_safediffusion.DDPOStableDiffusionPipeline`], e.g. a trainer's `sd_pipeline`):
      `pipeline.save_pretrained(folder, fuse_lora=fuse)`;
    - a diffusers `StableDiffusionPipeline`, full fine-tune (`lora=False`): its `save_pretrained(folder)`, loadable
      with `StableDiffusionPipeline.from_pretrained(folder)`;
    - a diffusers pipeline whose UNet carries peft adapters (added with `unet.add_adapter(LoraConfig(...))`),
      `lora=True`: [`~trl_safediffusion.DefaultDDPOStableDiffusionPipeline.save_lora`] writes
      `pytorch_lora_weights.safetensors` with the adapter config (rank, alpha, targets) in its metadata, loadable with
      `StableDiffusionPipeline.load_lora_weights(folder)`;
    - LoRA with `fuse=True`: the adapters are merged into a copy of the UNet and the full pipeline is saved (the
      pipeline passed in is not modified).

    Args:
        pipeline (`DDPOStableDiffusionPipeline` or `diffusers.StableDiffusionPipeline`): the trained pipeline.
        folder (`str`): output folder (created).
        lora (`bool`, *optional*): whether the UNet was trained with LoRA adapters; by default the library pipeline's
            `use_lora`, or whether a diffusers pipeline's UNet carries adapters.
        fuse (`bool`, *optional*, defaults to `False`): with LoRA, save the fused full pipeline instead.
        card_info ([`SafeDiffusionCardInfo`], *optional*): model card content; a minimal card is written otherwise.
        adapter_name (`str`, *optional*, defaults to `"default"`): the peft adapter of a diffusers pipeline's UNet to
            save; the pipeline's `save_lora` writes the adapter named `"default"`.
    """
    from ..pipelines.stable_diffusion import DDPOStableDiffusionPipeline, fuse_lora_unet

    os.makedirs(folder, exist_ok=True)
    if isinstance(pipeline, DDPOStableDiffusionPipeline):
        if lora is not None and bool(lora) != pipeline.use_lora:
            raise ValueError(
                f"save_pipeline_for_hub: lora={lora} but the pipeline has use_lora={pipeline.use_lora}; pass "
                f"lora={pipeline.use_lora} or leave lora out"
            )
        lora = pipeline.use_lora
        pipeline.save_pretrained(folder, fuse_lora=fuse)
    else:
        adapters = getattr(pipeline.unet, "peft_config", None) or {}
        lora = bool(adapters) if lora is None else lora
        if not lora:
            pipeline.save_pretrained(folder, safe_serialization=True)
        elif fuse:
            components = {**pipeline.components, "unet": fuse_lora_unet(pipeline.unet)}
            type(pipeline)(**components).save_pretrained(folder, safe_serialization=True)
        elif adapter_name not in adapters:
            raise ValueError(
                f"save_pipeline_for_hub(lora=True): the UNet has no LoRA adapter {adapter_name!r}; add one with "
                "unet.add_adapter(LoraConfig(...)) or pass lora=False to save the full pipeline"
            )
        elif adapter_name != "default":
            raise ValueError(
                f"save_pipeline_for_hub: adapter_name={adapter_name!r}, but the pipeline's save_lora writes the adapter "
                "'default'; add the trained adapter under that name or pass fuse=True to save it merged"
            )
        else:
            from ._pipeline_view import DiffusersPipelineView

            DiffusersPipelineView(pipeline).save_lora(folder)
    info = card_info or SafeDiffusionCardInfo()
    family = {}
    if not info.pipeline_class:  # the loading code and tags of the pipeline's family
        from ..pipelines.loading import family_of

        found = family_of(pipeline)
        family = {"pipeline_class": getattr(pipeline, "diffusers_pipeline_class_name", None) or (
            found.pipeline_class if found else None)}
        family["family_tags"] = info.family_tags or list(getattr(pipeline, "family_tags", None) or
                                                         (found.tags if found else []))
    write_model_card(folder, SafeDiffusionCardInfo(**{**info.__dict__, **family, "lora": lora and not fuse}))
    return folder


def push_folder_to_hub(folder: str, repo_id: str, *, repo_type: str = "model", private: bool | None = None,
                       token: str | None = None, commit_message: str | None = None, revision: str | None = None,
                       path_in_repo: str | None = None, allow_patterns: list[str] | None = None,
                       delete_patterns: list[str] | None = None) -> str:
    r"""
    Create `repo_id` if needed and upload `folder` to it in one commit; returns the commit URL.

    The folder is only read. Any failure (no network, bad token, 4xx / 5xx, unknown revision) is raised as one
    [`HubPushError`] whose message names the repo, the cause and the local folder, and never contains the token.

    Args:
        folder (`str`): local folder to upload.
        repo_id (`str`): `namespace/name` (or `name` for the token's user).
        repo_type (`str`, *optional*, defaults to `"model"`): `"model"` or `"dataset"`.
        private (`bool`, *optional*): visibility when the repo is created (`None`: the Hub's default).
        token (`str`, *optional*): write token; defaults to the logged-in token / `HF_TOKEN`.
        commit_message (`str`, *optional*): commit message.
        revision (`str`, *optional*): branch to commit to; created from `main` if missing.
        path_in_repo (`str`, *optional*): folder in the repo to upload into (repo root by default).
        allow_patterns (`list[str]`, *optional*): only upload files matching these patterns.
        delete_patterns (`list[str]`, *optional*): remote files (relative to `path_in_repo`) to delete in the same
            commit when they are not re-uploaded.
    """
    if not os.path.isdir(folder):
        raise ValueError(f"push_folder_to_hub: {folder!r} is not a folder; save the model or dataset there first")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        full_repo_id = url.repo_id
        if revision is not None and revision != "main":
            api.create_branch(full_repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        commit = api.upload_folder(
            repo_id=full_repo_id,
            folder_path=folder,
            path_in_repo=path_in_repo,
            repo_type=repo_type,
            revision=revision,
            commit_message=commit_message or "Upload with trl-safediffusion",
            allow_patterns=allow_patterns,
            delete_patterns=delete_patterns,
        )
    except _network_error_types() as err:
        raise HubPushError(repo_id, _describe_failure(err, token), repo_type=repo_type, local_folder=folder) from err
    logger.info("pushed %s to %s", folder, commit.commit_url)
    return commit.commit_url


def _push_operations(repo_id: str, additions: list[tuple[str, str]], deletions: list[str], *, repo_type: str,
                     private: bool | None, token: str | None, commit_message: str, revision: str | None) -> str:
    """One commit adding `(path_in_repo, local_path)` files and deleting `deletions` folders; raises HubPushError."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api = HfApi(token=token)
    operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=local) for p, local in additions]
    operations += [CommitOperationDelete(path_in_repo=p.rstrip("/") + "/", is_folder=True) for p in deletions]
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        if revision is not None and revision != "main":
            api.create_branch(url.repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        commit = api.create_commit(
            url.repo_id, operations, commit_message=commit_message, repo_type=repo_type, revision=revision
        )
    except _network_error_types() as err:
        raise HubPushError(repo_id, _describe_failure(err, token), repo_type=repo_type) from err
    return commit.commit_url


def _files_under(folder: str, prefix: str) -> list[tuple[str, str]]:
    """`(path_in_repo, local_path)` for every file under `folder`, with `prefix/` in front of the relative path."""
    out = []
    for root, _, files in os.walk(folder):
        for name in sorted(files):
            local = os.path.join(root, name)
            rel = os.path.relpath(local, folder).replace(os.sep, "/")
            out.append(((f"{prefix}/{rel}" if prefix else rel), local))
    return sorted(out)


def checkpoint_path_in_repo(epoch: int) -> str:
    """Where the checkpoint of `epoch` lives in a repo pushed with `hub_strategy="checkpoint"`."""
    return f"{CHECKPOINTS_DIR_IN_REPO}/{CHECKPOINT_PREFIX}{epoch}"


class CheckpointPusher:
    r"""
    Training-time publishing for a `hub_strategy`:

    - `"end"`: [`on_save`] does nothing (the trainer pushes the final model with `push_to_hub`);
    - `"every_save"`: every save pushes the model folder (pipeline or LoRA weights + README.md) to the repo root;
    - `"checkpoint"`: as `"every_save"`, and the accelerate checkpoint folder goes to
      `checkpoints/checkpoint_<epoch>/` in the same commit, so that `resume_from=<repo id>` can resume elsewhere.

    A failed push never stops training: it is logged as a (token-free) warning, remembered in `failed_pushes`, and
    retried at the next save, which uploads the newest model folder and checkpoint (they supersede the failed ones).
    Only the main process uploads; on other processes every call is a no-op.

    Args:
        repo_id (`str`): target model repo.
        strategy (`str`, *optional*, defaults to `"every_save"`): one of `"end"`, `"every_save"`, `"checkpoint"`.
        token (`str`, *optional*): write token (kept in memory only).
        private (`bool`, *optional*): visibility when the repo is created.
        is_main_process (`bool`, *optional*, defaults to `True`): pass `accelerator.is_main_process`.
        revision (`str`, *optional*): branch to push to.
        checkpoint_limit (`int`, *optional*): keep at most this many checkpoints in the repo; older ones that this
            pusher uploaded are deleted in the same commit (`None` keeps all).
    """

    def __init__(self, repo_id: str, strategy: str = "every_save", token: str | None = None,
                 private: bool | None = None, is_main_process: bool = True, revision: str | None = None,
                 checkpoint_limit: int | None = None):
        if strategy not in HUB_STRATEGIES:
            raise ValueError(f"CheckpointPusher: strategy must be one of {HUB_STRATEGIES}, got {strategy!r}")
        if checkpoint_limit is not None and checkpoint_limit < 1:
            raise ValueError(f"CheckpointPusher: checkpoint_limit must be >= 1 or None, got {checkpoint_limit}")
        self.repo_id = repo_id
        self.strategy = strategy
        self._token = token
        self.private = private
        self.is_main_process = is_main_process
        self.revision = revision
        self.checkpoint_limit = checkpoint_limit
        self.pushed_checkpoints: list[int] = []
        self.failed_pushes: list[str] = []
        self.last_commit_url: str | None = None

    def __repr__(self) -> str:  # no token in reprs either
        return f"CheckpointPusher(repo_id={self.repo_id!r}, strategy={self.strategy!r})"

    @property
    def pending(self) -> bool:
        """Whether the last push failed (the next save retries)."""
        return bool(self.failed_pushes) and self.last_commit_url is None

    def on_save(self, model_dir: str | None, checkpoint_dir: str | None = None, epoch: int | None = None) -> bool:
        r"""
        Push after a save. Returns `True` if a commit was made, `False` if nothing was pushed (strategy `"end"`, not
        the main process, or the push failed and will be retried at the next save).

        Args:
            model_dir (`str`, *optional*): saved model folder (pipeline or LoRA weights with README.md).
            checkpoint_dir (`str`, *optional*): accelerate checkpoint folder; uploaded only with `"checkpoint"`.
            epoch (`int`, *optional*): the epoch of the checkpoint (required when a checkpoint is uploaded; read from
                a `checkpoint_<epoch>` folder name otherwise).
        """
        if not self.is_main_process or self.strategy == "end":
            return False
        additions: list[tuple[str, str]] = []
        if model_dir is not None:
            additions += [
                (p, local) for p, local in _files_under(model_dir, "")
                if not p.startswith(CHECKPOINTS_DIR_IN_REPO + "/")
            ]
        deletions: list[str] = []
        if self.strategy == "checkpoint" and checkpoint_dir is not None:
            if epoch is None:
                name = os.path.basename(os.path.normpath(checkpoint_dir))
                if not (name.startswith(CHECKPOINT_PREFIX) and name[len(CHECKPOINT_PREFIX):].isdigit()):
                    raise ValueError(
                        f"CheckpointPusher.on_save: pass epoch= for checkpoint folder {checkpoint_dir!r} "
                        f"(its name is not {CHECKPOINT_PREFIX}<epoch>)"
                    )
                epoch = int(name[len(CHECKPOINT_PREFIX):])
            additions += _files_under(checkpoint_dir, checkpoint_path_in_repo(epoch))
            kept = sorted({*self.pushed_checkpoints, epoch})
            if self.checkpoint_limit is not None:
                deletions = [checkpoint_path_in_repo(e) for e in kept[: -self.checkpoint_limit] if e != epoch]
        if not additions:
            return False
        retry = " (retrying the failed push)" if self.pending else ""
        message = f"Training checkpoint, epoch {epoch}" if epoch is not None else "Training save"
        try:
            url = _push_operations(
                self.repo_id, additions, deletions, repo_type="model", private=self.private, token=self._token,
                commit_message=message + retry, revision=self.revision,
            )
        except HubPushError as err:
            self.failed_pushes.append(str(err))
            self.last_commit_url = None
            logger.warning("%s Training continues; the push is retried at the next save.", err)
            return False
        if self.strategy == "checkpoint" and checkpoint_dir is not None:
            self.pushed_checkpoints = [e for e in sorted({*self.pushed_checkpoints, epoch})
                                       if checkpoint_path_in_repo(e) not in deletions]
        self.last_commit_url = url
        logger.info("pushed %s to %s", message.lower(), url)
        return True


def is_local_or_repo_id(name: str) -> str:
    r"""
    `"local"` when `name` exists on disk (a local path always wins), `"repo"` when it looks like a Hub repo id
    (`namespace/name`); raises a `ValueError` otherwise.

    Args:
        name (`str`): a folder or a repo id, e.g. a `resume_from` value.
    """
    if os.path.exists(os.path.expanduser(name)):
        return "local"
    if _HUB_ID.fullmatch(name) and ".." not in name and not name.endswith(".git"):
        return "repo"
    raise ValueError(
        f"{name!r} is neither an existing local path nor a Hub repo id of the form 'namespace/name'; "
        "check the path or the repo id"
    )


def download_checkpoint(repo_id: str, revision: str | None = None, token: str | None = None,
                        local_dir: str | None = None, epoch: int | None = None) -> str:
    r"""
    Download the latest complete training checkpoint pushed with `hub_strategy="checkpoint"` (the highest
    `checkpoints/checkpoint_<epoch>/` that holds `trainer_state.json`) and return its local folder, ready for
    `accelerator.load_state`.

    Args:
        repo_id (`str`): the model repo the run pushed to.
        revision (`str`, *optional*): branch or commit.
        token (`str`, *optional*): read token for private repos.
        local_dir (`str`, *optional*): where to put the files (the Hub cache by default).
        epoch (`int`, *optional*): download this epoch's checkpoint instead of the latest.

    Raises:
        `FileNotFoundError` when the repo holds no complete checkpoint; [`HubDownloadError`] (an `OSError`) for
        network or access problems.
    """
    from huggingface_hub import HfApi, snapshot_download

    api = HfApi(token=token)
    try:
        files = api.list_repo_files(repo_id, revision=revision)
    except _network_error_types() as err:
        raise HubDownloadError(repo_id, f"could not list its files: {_describe_failure(err, token)}") from err
    pattern = re.compile(rf"^{CHECKPOINTS_DIR_IN_REPO}/{CHECKPOINT_PREFIX}(\d+)/{re.escape(TRAINER_STATE_NAME)}$")
    epochs = sorted(int(m.group(1)) for m in map(pattern.match, files) if m is not None)
    if epoch is not None:
        epochs = [e for e in epochs if e == epoch]
    if not epochs:
        which = f"for epoch {epoch} " if epoch is not None else ""
        raise FileNotFoundError(
            f"Hub repo {repo_id!r} holds no complete checkpoint {which}(a {CHECKPOINTS_DIR_IN_REPO}/"
            f"{CHECKPOINT_PREFIX}<epoch>/ folder with {TRAINER_STATE_NAME}); it must be pushed with "
            "hub_strategy='checkpoint'"
        )
    in_repo = checkpoint_path_in_repo(epochs[-1])
    try:
        root = snapshot_download(
            repo_id, revision=revision, token=token, local_dir=local_dir, allow_patterns=[f"{in_repo}/*"]
        )
    except _network_error_types() as err:
        raise HubDownloadError(repo_id, f"could not download {in_repo}: {_describe_failure(err, token)}") from err
    path = os.path.join(root, *in_repo.split("/"))
    logger.info("downloaded checkpoint %s of %s to %s", in_repo, repo_id, path)
    return path



__all__ = [
    "CHECKPOINTS_DIR_IN_REPO",
    "CHECKPOINT_PREFIX",
    "HUB_STRATEGIES",
    "TRAINER_STATE_NAME",
    "CheckpointPusher",
    "checkpoint_path_in_repo",
    "download_checkpoint",
    "is_local_or_repo_id",
    "push_folder_to_hub",
    "save_pipeline_for_hub",
]
