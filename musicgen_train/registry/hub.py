"""Optional: push an exported model folder to the Hugging Face Hub (``registry.hub_repo``)."""

from __future__ import annotations

from pathlib import Path

from musicgen_train.errors import UserError


def push_to_hub(folder: Path, repo: str, *, private: bool = True, message: str = "") -> str:
    """Upload ``folder`` to the model repo ``repo`` (created if missing); returns the commit URL."""
    from huggingface_hub import HfApi, get_token

    token = get_token()
    if not token:
        raise UserError(
            f"registry.hub_repo={repo} needs a Hugging Face token: set HF_TOKEN or run "
            "`hf auth login`"
        )
    api = HfApi(token=token)
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo,
            folder_path=str(folder),
            repo_type="model",
            commit_message=message or "musicgen-train export",
        )
    except Exception as err:  # offline mode, network, auth and permission errors alike
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise UserError(
            f"could not push {folder} to the Hugging Face Hub repo {repo}: {reason}"
        ) from err
    return str(getattr(commit, "commit_url", commit))
