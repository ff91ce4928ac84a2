"""Training under torchrun: two CPU ranks (gloo) against one process at the same global batch."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from model import data as D  # noqa: E402
from model.distributed import DistributedError, batch_share, from_env, patch_share  # noqa: E402

# a tiny hybrid: the smallest patch the trainer takes, 4 features, 2 steps of 4 patches
TINY = ["--network", "hybrid", "--features", "4", "--patch", "512", "--steps", "2",
        "--batch", "4", "--scratch", "2", "--val-patches", "2", "--seed", "3", "-q"]


class _Windows:
    """A cheap window source, a pure function of (seed, index) like the real ones."""

    seed, patch = 11, 64

    def window(self, index, scratch):
        rng = np.random.default_rng([self.seed, index])
        size = self.patch + D.MARGIN
        frames = rng.integers(0, 4096, (6, size, size), dtype=np.uint16)
        mask = np.zeros((size, size), bool)
        if scratch:
            mask[size // 2, 4:-4] = True
        return D.RawWindow(frames, mask)


def test_the_ranks_shares_together_are_the_one_process_batch():
    sampler = D.PatchSampler(_Windows(), (0, 30, 60, 90, 120, 150), batch_size=4,
                             scratch_per_batch=1)
    whole = sampler.batch(5)
    shares = [patch_share(sampler, 5, batch_share(4, r, 2)) for r in range(2)]
    assert [len(s) for s in shares] == [2, 2]
    for a, b in zip(whole, shares[0] + shares[1], strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert [p.has_scratch for p in shares[0] + shares[1]] == [True, False, False, False]


def test_a_global_batch_that_does_not_split_is_refused():
    assert list(batch_share(6, 2, 3)) == [4, 5]
    with pytest.raises(DistributedError, match="--batch 6 is the global batch.*4 ranks"):
        batch_share(6, 0, 4)


def test_a_broken_torchrun_environment_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(DistributedError, match="rank 2 of 2"):
        from_env()


def _train(out, epochs, ranks=1, resume=False):
    """``glass-inspect train`` as one process or under torchrun; -> its stdout."""
    launch = [sys.executable, "-m", "edge.cli"] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc_per_node", str(ranks), "-m", "edge.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # both runs alike, and the 2 ranks fit 2 cores
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [*launch, "train", *TINY, "--epochs", str(epochs), "--out", str(out)]
    done = subprocess.run(cmd + (["--resume"] if resume else []), capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _history(out):
    return json.loads((out / "history.json").read_text())


def test_two_ranks_follow_one_process_and_resume_on_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _train(one, 3)
    printed = _train(two, 2, ranks=2)
    assert printed.count("best checkpoint:") == 1  # rank 0 alone reports
    assert sorted(p.name for p in two.iterdir()) == ["best.pt", "history.json", "last.pt",
                                                     "loss.png"]
    a, b = _history(one), _history(two)
    assert [h["epoch"] for h in b] == [1, 2]
    # The same patches and, with DDP's mean of the two equal shares' gradients, the same
    # update up to the order of float32 sums (measured: 2e-8 relative). 1e-5 leaves room for
    # another machine's summation order and none for other patches or unshared gradients.
    for h1, h2 in zip(a[:2], b, strict=True):
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-5)
        assert h2["val_loss"] == pytest.approx(h1["val_loss"], rel=1e-5)
    # the 2-rank checkpoint goes on in one process, to the one-process run's third epoch
    _train(two, 3, resume=True)
    c = _history(two)
    assert [h["epoch"] for h in c] == [1, 2, 3]
    assert c[:2] == b
    assert c[2]["train_loss"] == pytest.approx(a[2]["train_loss"], rel=1e-5)
    assert c[2]["val_loss"] == pytest.approx(a[2]["val_loss"], rel=1e-5)
