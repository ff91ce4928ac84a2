"""A calibration run's folder: each step's result kept as it finishes, so a run resumes.

``DIR/steps/NAME.npz`` holds a step's arrays and ``DIR/steps/NAME.json`` its figures; the JSON
is written last (atomically), so a step counts as done only when both are complete. An
interrupted step (a power cut, Ctrl-C, a camera fault) is measured again on the next run; the
steps before it are not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


class StepStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.dir = self.root / "steps"
        self.dir.mkdir(parents=True, exist_ok=True)

    def done(self, name: str) -> bool:
        return (self.dir / f"{name}.json").is_file() and (self.dir / f"{name}.npz").is_file()

    def save(self, name: str, summary: dict, **arrays: np.ndarray) -> None:
        npz = self.dir / f"{name}.npz"
        tmp = npz.with_name(npz.name + ".part")
        with tmp.open("wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(npz)
        js = self.dir / f"{name}.json"
        tmp = js.with_name(js.name + ".part")
        tmp.write_text(json.dumps(summary, indent=1) + "\n")
        tmp.replace(js)

    def load(self, name: str) -> tuple[dict, dict[str, np.ndarray]]:
        summary = json.loads((self.dir / f"{name}.json").read_text())
        with np.load(self.dir / f"{name}.npz") as z:
            arrays = {k: z[k] for k in z.files}
        return summary, arrays

    def forget(self, name: str) -> None:
        for suffix in (".json", ".npz"):
            (self.dir / f"{name}{suffix}").unlink(missing_ok=True)
