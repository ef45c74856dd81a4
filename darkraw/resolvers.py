"""OmegaConf resolvers that the configs use; registered once, before Hydra builds paths."""

from __future__ import annotations

import hashlib

from omegaconf import OmegaConf

#: Longest folder name made from overrides, in bytes. File systems allow 255; longer names made
#: Hydra's mkdir fail with "File name too long", killing the job (and a whole sweep) before
#: train.py starts.
MAX_DIRNAME_BYTES = 200


def run_dirname(override_dirname: str) -> str:
    """A folder name from a job's overrides: stable across relaunches, so resume finds it.

    Names over :data:`MAX_DIRNAME_BYTES` keep a readable prefix and end in a hash of the whole
    name (still stable; the full overrides are in ``<folder>/.hydra/overrides.yaml``).
    """
    cleaned = override_dirname.replace("/", "_").replace("\\", "_").strip()
    encoded = cleaned.encode()
    if len(encoded) > MAX_DIRNAME_BYTES:
        digest = hashlib.sha1(encoded).hexdigest()[:12]
        prefix = encoded[: MAX_DIRNAME_BYTES - len(digest) - 1].decode(errors="ignore")
        cleaned = f"{prefix}-{digest}"
    return cleaned or "default"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("darkraw.dirname"):
        OmegaConf.register_new_resolver("darkraw.dirname", run_dirname)


register_resolvers()
