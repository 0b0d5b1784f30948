"""Which files on the engine's machine a client may name: styles given by `path`, Gatys' `init`.

This is the one place that decides. The server picks the policy by transport and applies it to a
job before queueing it; the pipeline then loads what the job names, as `nst stylize` does in-process:

- `LOCAL`: any path. In-process callers, and clients on the Unix socket, which only the engine's
  own user can reach (the socket is 0600).
- `confined(styles_dir)`: TCP clients. A TCP client may be anyone holding the token, perhaps
  through a tunnel, so none of its paths reaches the file system except an image file inside the
  styles folder the engine's owner chose (`nst serve --styles-dir`); everything else sends pixels.
  Every other path is refused with the same message whether or not it exists, so that refusals
  tell nothing about the rest of the machine.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError
from nst_common.messages import StylizeJob

INIT_KEYWORDS = ("content", "noise")  # the values of `init` that name no file


@dataclass(frozen=True)
class FileAccess:
    confined: bool = False  # False: any path (LOCAL)
    styles_dir: Path | None = None  # with `confined`: the only folder paths may point into

    @property
    def paths(self) -> str:
        """What `hello` says of paths: "any", "styles-dir" or "none"."""
        if not self.confined:
            return "any"
        return "none" if self.styles_dir is None else "styles-dir"

    def image_path(self, text: str, what: str) -> str:
        """The file `text` names, as the pipeline should open it; UserError when this policy refuses it."""
        if not self.confined:
            return text
        shown = text if len(text) <= 200 else text[:200] + "..."
        if self.styles_dir is None:
            raise UserError(
                "path-refused",
                f"{what} {shown!r}: over TCP this engine reads no files on its machine; send the image's "
                "pixels instead",
            )
        refused = UserError(
            "path-refused",
            f"{what} {shown!r} is not an image file in the engine's styles folder; send the image's pixels, "
            "or name a file in that folder",
        )
        root = os.path.realpath(self.styles_dir)
        try:
            target = os.path.realpath(os.path.join(root, text))  # a symlink that leads out is out
            inside = os.path.commonpath([root, target]) == root and target != root
        except (ValueError, OSError):  # a NUL byte, a path on another drive
            raise refused from None
        if not inside or not os.path.isfile(target):
            raise refused
        return target

    def check_job(self, job: StylizeJob) -> StylizeJob:
        """`job` with every file it names resolved under this policy; UserError for one refused."""
        if not self.confined:
            return job
        styles = [
            ref
            if ref.path is None
            else dataclasses.replace(ref, path=self.image_path(ref.path, f"style {i + 1}"))
            for i, ref in enumerate(job.styles)
        ]
        params = job.params
        init = params.get("init")
        if isinstance(init, str) and init not in INIT_KEYWORDS:
            params = {**params, "init": self.image_path(init, "init")}
        return dataclasses.replace(job, styles=styles, params=params)


LOCAL = FileAccess()


def confined(styles_dir: Path | None) -> FileAccess:
    return FileAccess(confined=True, styles_dir=styles_dir)
