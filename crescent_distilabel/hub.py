"""The Hugging Face Hub, behind one module: publish a run directory as a Distiset-style dataset repo.

One commit carries everything (Parquet shards per config, ``README.md`` card, ``pipeline.yaml``/``.log``,
``recipe.yaml``), so a dataset on the Hub is never half-published, and every publish is a revision that
``load_dataset(repo, revision=...)`` can pin. The layout is distilabel's (``<config>/train-*.parquet`` plus
``pipeline.yaml``), so ``load_dataset(repo, config)`` and the Hub viewer read it.

The token comes from where huggingface_hub looks (argument, ``HF_TOKEN``, ``hf auth login`` cache) and is
only ever sent as a request header: it is never written to the card, the files or the logs.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from crescent_distilabel.run_dir import RunDir

if TYPE_CHECKING:
    from huggingface_hub import HfApi

MAX_SHARD_BYTES = 500 * 1024 * 1024
EXTRA_FILES = ("distiset_configs/pipeline.yaml", "distiset_configs/pipeline.log", "recipe.yaml")


class HubError(RuntimeError):
    """The Hub could not be used; the message says why and what to do. Local data is never touched."""


@dataclass
class PublishResult:
    """A publish: the repo, its URL, the commit (a revision ``load_dataset`` can pin) and the configs sent."""

    repo_id: str
    url: str
    commit: str
    configs: list[str]
    rows: dict[str, int]
    private: bool


def _api(token: str | None) -> tuple[HfApi, str]:
    """A client and its token, or a HubError naming where the token should come from."""
    from huggingface_hub import HfApi, constants, get_token

    token = token or get_token()
    if not token:
        raise HubError(
            "no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access, from "
            "https://huggingface.co/settings/tokens)"
        )
    return HfApi(endpoint=constants.ENDPOINT, token=token), token


def _explain(err: Exception, action: str) -> HubError:
    """Turn a huggingface_hub/httpx failure into a message a user can act on (never echoing the token)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    # huggingface_hub 2.x speaks through httpx2 (1.x: httpx/requests): recognise transport errors by name
    if any(cls.__name__ in ("TransportError", "ConnectionError", "TimeoutException") for cls in type(err).__mro__):
        return HubError(f"cannot reach the Hub at {constants.ENDPOINT} to {action} ({type(err).__name__}: {err})")
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        if status == 401:
            return HubError(f"the Hub refused the token (401) to {action}: set a valid HF_TOKEN or run hf auth login")
        if status == 403:
            return HubError(f"the token may not {action} (403): use a token with write access to that namespace")
        return HubError(f"the Hub answered {status} to {action}: {err}")
    return HubError(f"could not {action}: {err}")


def whoami(token: str | None = None) -> str:
    """The user the token belongs to (checks the token before any upload)."""
    api, _ = _api(token)
    try:
        return api.whoami()["name"]
    except Exception as err:
        raise _explain(err, "check the token") from None


def _write_parquet(dataset, folder: Path, config: str) -> list[tuple[str, Path]]:
    """Parquet shards of at most ~500 MB: (path in repo, local file)."""
    num_shards = max(1, math.ceil((dataset._estimate_nbytes() if len(dataset) else 0) / MAX_SHARD_BYTES))
    out = []
    for i in range(num_shards):
        name = f"{config}/train-{i:05d}-of-{num_shards:05d}.parquet"
        local = folder / name
        local.parent.mkdir(parents=True, exist_ok=True)
        dataset.shard(num_shards, i, contiguous=True).to_parquet(str(local))
        out.append((name, local))
    return out


def _prepare_repo(api: HfApi, repo_id: str, repo_type: str, private: bool, exist_ok: bool) -> tuple[bool, bool, set]:
    """Check the token, refuse to overwrite an existing repo unless asked, create it if needed.

    Returns (existed, private, files already in it).
    """
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        api.whoami()
    except Exception as err:
        raise _explain(err, "check the token") from None
    try:
        is_private = bool(api.repo_info(repo_id, repo_type=repo_type).private)
        exists = True
    except RepositoryNotFoundError:
        exists, is_private = False, private
    except Exception as err:
        raise _explain(err, f"look up {repo_id}") from None
    if exists and not exist_ok:
        raise HubError(
            f"the {repo_type} repo {repo_id} already exists on the Hub; pass --exist-ok (exist_ok=True) to publish a "
            "new revision of it, or choose another name"
        )
    try:
        if not exists:
            api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        existing = set(api.list_repo_files(repo_id, repo_type=repo_type)) if exists else set()
    except Exception as err:
        raise _explain(err, f"create {repo_id}") from None
    return exists, is_private, existing


def publish(
    output_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    include_dropped: bool = False,
    include_reviewed: bool = True,
    exist_ok: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> PublishResult:
    """Publish a run directory to a Hub dataset repo in one commit.

    Args:
        output_dir: a finished run (``crescent generate``'s output directory).
        repo_id: ``namespace/name`` on the Hub.
        private: create the repo private (an existing repo keeps its visibility).
        include_dropped: also publish the ``dropped`` config (every sample that was not kept, with the
            intermediate stages). Empty configs are left out (an empty split cannot be loaded back).
        include_reviewed: publish ``reviewed``/``reviewed_preference``/``review_rejected`` when ``crescent review
            pull`` made them.
        exist_ok: add a commit to an existing repo (replacing the published configs); otherwise an existing
            repo is an error, so a typo cannot overwrite someone's dataset.
        token: a Hub token; default ``HF_TOKEN`` or the login cache.

    Raises:
        HubError: no or bad token, Hub unreachable, repo exists, or the upload failed.
        RunDirError: ``output_dir`` is not a finished run.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    run = RunDir(Path(output_dir))
    configs = [
        c
        for c in run.configs()
        if c in ("default", "preference")
        or (c in ("dropped", "contaminated") and include_dropped)
        or (c in ("reviewed", "reviewed_preference", "review_rejected") and include_reviewed)
    ]
    datasets = {config: run.load(config) for config in configs}
    configs = [c for c in configs if len(datasets[c])]  # an empty split cannot be loaded back from Parquet
    if not configs:
        raise HubError(
            f"{output_dir} kept no pairs: nothing to publish (pass --include-dropped to publish the dropped samples)"
        )
    api, token = _api(token)
    _, is_private, existing = _prepare_repo(api, repo_id, "dataset", private, exist_ok)

    rows: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="crescent-publish-") as tmp:
        operations: list = []
        for config in configs:
            dataset = datasets[config]
            rows[config] = len(dataset)
            shards = _write_parquet(dataset, Path(tmp), config)
            names = {name for name, _ in shards}
            stale = [p for p in sorted(existing) if p.startswith(f"{config}/") and p not in names]
            operations += [CommitOperationDelete(p) for p in stale]
            operations += [CommitOperationAdd(name, str(local)) for name, local in shards]
        operations.append(CommitOperationAdd("README.md", run.card(configs, hub=True).encode()))
        for extra in EXTRA_FILES:
            if (run.path / extra).is_file():
                operations.append(CommitOperationAdd(Path(extra).name, str(run.path / extra)))
        message = commit_message or f"CRESCENT dataset: {', '.join(f'{c} ({rows[c]} rows)' for c in configs)}"
        try:
            info = api.create_commit(repo_id, operations, commit_message=message, repo_type="dataset")
        except Exception as err:
            raise _explain(err, f"upload to {repo_id}") from None
    return PublishResult(repo_id, info.repo_url.url, info.oid, configs, rows, is_private)


MODEL_IGNORE = ("merged/*", "checkpoint-*/*", "runs/*", "*.partial/*", "training_args.bin", ".published")


def publish_model(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    exist_ok: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> PublishResult:
    """Publish a trained model directory (weights or LoRA adapter, tokenizer, ``README.md`` card,
    ``recipe.yaml``, evaluation results) to a Hub model repo in one commit.

    Args:
        model_dir: ``crescent train``'s output directory.
        repo_id: ``namespace/name`` on the Hub.
        private: create the repo private.
        exist_ok: add a revision to an existing repo instead of refusing.
        token: a Hub token; default ``HF_TOKEN`` or the login cache.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "README.md").is_file():
        raise HubError(f"{model_dir} holds no trained model (README.md missing); run `crescent train` first")
    api, _ = _api(token)
    _, is_private, _ = _prepare_repo(api, repo_id, "model", private, exist_ok)
    try:
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(model_dir),
            repo_type="model",
            ignore_patterns=list(MODEL_IGNORE),
            delete_patterns=["*.safetensors", "*.bin"],  # weights of an older revision do not linger
            commit_message=commit_message or f"CRESCENT fine-tune of {model_dir.name}",
        )
    except Exception as err:
        raise _explain(err, f"upload to {repo_id}") from None
    files = sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file())
    return PublishResult(repo_id, f"{api.endpoint}/{repo_id}", info.oid, files, {}, is_private)
