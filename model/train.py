"""Training of both networks on recorded or simulated samples (glass paper, section 5.6).

* Adam, learning rate 1e-4, betas (0.5, 0.9), eps 1e-8; Xavier-uniform initialisation.
* Batches from :class:`~model.data.PatchSampler`: a fixed number of scratch patches per batch
  (the paper: one), background patches without information dropped, Bayer-preserving flips and
  turns, Gaussian and salt-and-pepper noise.
* The scratch U-Net learns with the autoencoder loss (``tanh`` outputs) or, as the paper's
  comparison, with binary cross-entropy (``sigmoid`` outputs); the attention fusion network
  learns window labels (a 256 x 256 window of the 512 x 512 input holds a scratch or not) with
  cross-entropy.
* Validation after every epoch on a fixed set of patches from held-out data: the loss, pixel
  metrics at ``t_low`` and object metrics after the runtime's own post-processing
  (:mod:`edge.postprocess`) for the U-Net; accuracy, precision and recall for the classifier.
* Checkpoints (``last.pt`` every epoch, ``best.pt`` at the lowest validation loss) hold the
  weights, the optimiser, the settings, the head configuration's digest and post-processing, and
  the metric history; they contain only tensors and plain values, so they load with
  ``torch.load(weights_only=True)``. ``resume`` continues from ``last.pt``. The same settings and
  seed give the same run: every patch is a pure function of (seed, step, position).

Single dark-field frames (``data="darkfield"``, the weak-scratch paper's own data; network
``fusion`` only): :class:`~model.attention.AttentionFusionNet` with ``in_channels=1`` learns
windows of simulated single frames (:mod:`edge.sim.darkfield`, :mod:`model.windows`). Choices:

* Frames split by seed as the paper's 80 / 12 / 20 images (:func:`model.windows.image_split`
  from seed 0, ``train_images`` / ``val_images``; the test frames follow them and are left to
  :mod:`model.window_eval`). The split does not move with ``seed``: every run, seed and
  ablation validates on the same frames and never sees the test frames.
* Training windows: :class:`model.windows.WindowSampler` over the training frames (the paper's
  three sampling modes, labels by the 4-pixel rule and the visibility rule), step ``t`` takes
  windows ``t * batch .. (t + 1) * batch - 1``. :data:`DARKFIELD_PER_IMAGE` (4) consecutive
  windows share a frame, so a batch of 32 mixes 8 frames (batch-norm statistics of one frame's
  haze would be a poor estimate of the rest); all training frames stay rendered in memory (about
  12 MB each), so each is rendered once per run. Each window is flipped up-down and left-right
  with probability 1/2 each, drawn from (seed, step): the paper's 80 frames hold only some 160
  scratches, and flips keep everything the simulator makes upright (the two-tap seam stays
  vertical, a line-scan camera's fall-off stays along the row); not for a Bayer mosaic, whose
  phase a flip would change. The network whitens its input (``FusionSpec.whiten``, the simulated
  camera's noise model); windows whose scratch is too weak to see (:data:`model.windows.FAINT`)
  are left out of the loss (:func:`darkfield_loss`) and of the validation metrics.
* Validation: the fixed set :func:`model.window_eval.heldout_set` of ``val_windows`` windows
  from the validation frames (kept in ``window_cache``, else the default cache), every epoch:
  loss, accuracy, precision, recall and F1 at ``logit >= 0`` (probability 0.5), and the
  probability threshold of :data:`OPERATING_POINTS` with the best F1 on those windows
  (``best_threshold``, ties to the one nearest 0.5), which the export can make the model's
  own decision boundary (:mod:`export.onnx`).
* Optimiser: Adam with its usual betas (0.9, 0.999), as the weak-scratch paper (section III.B)
  uses it; the six-state paths keep the glass paper's (0.5, 0.9). ``lr_drop_patience`` divides
  the learning rate by 10 after that many epochs without a lower validation loss (the paper:
  "reduced by 10 ... while observing the validation loss decreasing slowly"); 0 keeps it
  constant.
* More frames than the paper's: ``extra_train_images`` adds training frames from seed
  :data:`model.windows.EXTRA_TRAIN_SEED` on, so the validation and test frames stay where the
  paper's split puts them; ``init`` starts from another checkpoint's weights (same network and
  spec, up to the settings of fixed stages such as the whitening's) with a fresh optimiser, to
  fine-tune a run on them. ``freeze_norm`` keeps the batch-norm layers' running statistics
  (and uses them in training too) as ``init`` left them: a fine-tune on a few frames of
  another camera mixed with simulated ones otherwise moves them to the mixture's, and the
  simulated windows, normalised with those, are forgotten at once (re-estimating them alone on
  30 mixed batches of issue 29's held-out texture took the shipped classifier's validation F1
  from 0.915 to 0.298, no weight changed). Its default: on whenever ``init`` is given.
  ``extra_peak_dn`` draws those extra frames' scratches from another
  peak range (log-uniform, DN): the misses are scratches near the visibility limit, which the
  test frames' 3-300 DN draws rarely. Only training frames change; validation and test frames
  keep the simulator's own range. ``extra_chain_share`` likewise sets the share of their
  scratches broken into chains of points. ``extra_texture`` renders them with a texture family
  of :mod:`edge.sim.darkfield_texture` (``"mixed"``: grain, pits, glare, dust, seams, dark
  lines, 8-bit levels, other noise, drawn per frame), so the classifier learns that a grainy
  background is not a scratch; the held-out family is refused, it stands in for an unseen
  camera. The paper's 80 frames and the validation frames stay untextured, so the epoch is
  chosen on the same validation windows as every earlier run.
* ``faint_weight``: the loss weight of scratch windows whose visibility is below
  :data:`FAINT_WEIGHT_BELOW` (15; the labels' limit is 5), 1 elsewhere. The misses are windows of
  visibility 5-12; the fainter extra frames give them more examples, this more gradient each.
  Only the training loss changes: validation and its operating point score every window alike.
* ``ba``, ``sa``, ``ca``: the Table III ablations (:class:`~model.attention.FusionSpec`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from edge.config import HeadConfig
from edge.sim.darkfield_texture import HELDOUT as HELDOUT_TEXTURE
from edge.sim.darkfield_texture import TRAINING_TEXTURES
from model import data as D
from model import distributed
from model.attention import STRIDE, WINDOW, AttentionFusionNet, FusionSpec, window_origins
from model.hybrid import HybridNet, HybridSpec
from model.loss import DEFAULT_ALPHA, autoencoder_loss, cross_entropy_loss
from model.metrics import Tally
from model.unet import GlassUNet, UNetSpec, parameter_count
from model.windows import (
    FAINT,
    WINDOW_MIN_PIXELS,
    WindowSampler,
    image_split,
    train_seeds,
)

log = logging.getLogger("glass-inspect.train")

CHECKPOINT_FORMAT = "glass-inspect-checkpoint/1"
VALIDATION_SEED_OFFSET = 1_000_003
DATA = ("sixstate", "darkfield")
DARKFIELD_PER_IMAGE = 4  # consecutive training windows from one frame (module docstring)
DARKFIELD_VAL_BATCH = 32
FAINT_WEIGHT_BELOW = 15.0  # visibility under which faint_weight applies (module docstring)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, not ours, or from other settings)."""


@dataclass
class TrainSettings:
    network: str = "unet"  # "unet" (glass paper), "fusion" (weak-scratch paper) or "hybrid"
    loss: str = "autoencoder"  # U-Net and hybrid: "autoencoder" or "bce"
    alpha: float = DEFAULT_ALPHA
    width: float = 0.125
    features: int = 16  # hybrid only: the learned head's feature count (model.hybrid)
    levels: int = 6
    nested: bool = True
    epochs: int = 10
    steps_per_epoch: int = 50
    batch_size: int = 4
    scratch_per_batch: int = 1
    val_patches: int = 16
    lr: float = 1e-4
    seed: int = 0
    patch: int = D.PATCH
    input_compression: float = 0.0  # U-Net only, see model.unet
    samples: list[str] = field(default_factory=list)  # recorded sample folders; empty: simulate
    # labelled recorded samples (labels.json, model.recorded_labels), mixed with simulated
    # windows at sim_share
    recorded: list[str] = field(default_factory=list)
    sim_share: float = 0.5
    # darkfield: a user's labelled single frames (model.label_windows), mixed with simulated
    # windows at sim_share; images_bit_depth 0 reads them as classify does without --bit-depth
    images: str = ""
    labels: str = ""
    images_bit_depth: int = 0
    window_cache: str = ""  # folder of pre-made training windows (model.data.CachedWindows)
    window_pool: int = 2000  # windows of each kind a run cycles over, when cached
    # "sixstate": 24-channel RAW stacks of the six LED states; "darkfield": single dark-field
    # frames (network "fusion" only; window_cache then keeps the validation windows)
    data: str = "sixstate"
    ba: bool = True  # fusion: brightness adjustment
    sa: bool = True  # fusion: scale attention
    ca: bool = True  # fusion: channel attention
    frame_px: int = 2048  # darkfield: side of the simulated frames
    train_images: int = 80  # darkfield: training frames (seeds 0 ..)
    val_images: int = 12  # darkfield: validation frames (the seeds after the training ones)
    val_windows: int = 512  # darkfield: windows of the fixed validation set
    # darkfield: training frames beyond the paper's, seeds EXTRA_TRAIN_SEED.. (never a
    # validation or test seed): the simulator is not limited to 80 frames
    extra_train_images: int = 0
    # darkfield: scratch peak range (DN) of those extra frames, when not the test frames' own:
    # scratches near the visibility limit are the misses, and log-uniform 3-300 DN draws few
    extra_peak_dn: tuple[float, float] | None = None
    # darkfield: share of the extra frames' scratches broken into chains of points, when not
    # the simulator's 25 %: chains were two thirds of the validation misses
    extra_chain_share: float | None = None
    # darkfield: texture family of those extra frames (edge.sim.darkfield_texture); never the
    # held-out family, which stands in for a camera no training saw
    extra_texture: str = "none"
    # darkfield: loss weight of scratch windows below FAINT_WEIGHT_BELOW visibility (1: none)
    faint_weight: float = 1.0
    # darkfield: side of the whitening's background mean (model.attention)
    background_px: int = FusionSpec.background_px
    # hybrid: long-line z-score channels (model.hybrid.LineBank), lengths in quarter cells
    line_lengths: tuple[int, ...] = ()
    init: str = ""  # a checkpoint of the same network whose weights start the run (fine-tuning)
    # batch-norm running statistics kept as init left them (module docstring); None: on with init
    freeze_norm: bool | None = None
    lr_drop_patience: int = 0  # epochs without a lower validation loss before lr / 10; 0 never

    def __post_init__(self) -> None:
        problems = []
        if self.data not in DATA:
            problems.append(f"data must be 'sixstate' or 'darkfield', got {self.data!r}")
        elif self.data == "darkfield" and self.network != "fusion":
            problems.append(f"data 'darkfield' (single dark-field frames) trains the window "
                            f"classifier: network must be 'fusion', got {self.network!r}")
        if self.background_px != FusionSpec.background_px and self.data != "darkfield":
            problems.append("background_px sets the whitening of single dark-field windows: it "
                            f"needs data 'darkfield', got {self.data!r}")
        if self.network != "fusion" and not (self.ba and self.sa and self.ca):
            problems.append("ba, sa and ca switch modules of the attention fusion network: "
                            f"they apply to network 'fusion' only, not {self.network!r}")
        if self.extra_train_images < 0 or (self.extra_train_images and self.data != "darkfield"):
            problems.append("extra_train_images adds single dark-field frames: a non-negative "
                            f"count with data 'darkfield', got {self.extra_train_images}")
        if self.extra_peak_dn is not None:
            peak = tuple(float(v) for v in self.extra_peak_dn)
            if not self.extra_train_images or len(peak) != 2 or not 0 < peak[0] < peak[1]:
                problems.append("extra_peak_dn is the scratch peak range LO < HI (DN, both "
                                "positive) of the extra training frames: it needs "
                                f"extra_train_images, got {list(self.extra_peak_dn)}")
        if self.extra_chain_share is not None and not (
                self.extra_train_images and 0.0 <= self.extra_chain_share <= 1.0):
            problems.append("extra_chain_share is the share (0-1) of the extra training frames' "
                            "scratches broken into chains of points: it needs "
                            f"extra_train_images, got {self.extra_chain_share}")
        if self.extra_texture == HELDOUT_TEXTURE:
            problems.append(f"extra_texture {HELDOUT_TEXTURE!r} is the held-out family, the "
                            "stand-in for an unseen camera: no training may draw it; use one "
                            f"of {', '.join(TRAINING_TEXTURES)}")
        elif self.extra_texture not in TRAINING_TEXTURES:
            problems.append(f"extra_texture must be one of {', '.join(TRAINING_TEXTURES)}, got "
                            f"{self.extra_texture!r}")
        elif self.extra_texture != "none" and not self.extra_train_images:
            problems.append(f"extra_texture renders the extra training frames with texture "
                            f"{self.extra_texture!r}: it needs extra_train_images")
        if not (1.0 <= self.faint_weight <= 100.0) or (self.faint_weight != 1.0
                                                       and self.data != "darkfield"):
            problems.append("faint_weight weighs faint scratch windows of single dark-field "
                            "frames in the loss: 1-100 with data 'darkfield', got "
                            f"{self.faint_weight}")
        for name in ("train_images", "val_images", "val_windows"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.frame_px < 2 * WINDOW or self.frame_px % 2:
            problems.append(f"frame_px must be even and at least {2 * WINDOW}, got "
                            f"{self.frame_px}")
        if self.line_lengths and self.network != "hybrid":
            problems.append(f"line_lengths adds the hybrid network's long-line channels: it "
                            f"needs network 'hybrid', got {self.network!r}")
        if self.recorded and (self.samples or self.data != "sixstate" or self.window_cache):
            problems.append("recorded (labelled samples) is six-state data of its own: leave "
                            "out samples, window_cache and data 'darkfield'")
        if self.images and (self.data != "darkfield" or not self.labels):
            problems.append("images (labelled single dark-field frames) need data 'darkfield' "
                            "(network 'fusion') and their labels folder")
        if not 0 <= self.images_bit_depth <= 16:
            problems.append(f"images_bit_depth must be 0 (as read) to 16, got "
                            f"{self.images_bit_depth}")
        if not 0.0 <= self.sim_share <= 1.0:
            problems.append(f"sim_share must be within 0..1, got {self.sim_share}")
        if self.freeze_norm and not self.init:
            problems.append("freeze_norm keeps the batch-norm statistics of the checkpoint a "
                            "run starts from: it needs init")
        if self.lr_drop_patience < 0:
            problems.append(f"lr_drop_patience must be 0 (never) or more, got "
                            f"{self.lr_drop_patience}")
        if self.network not in ("unet", "fusion", "hybrid"):
            problems.append(f"network must be 'unet', 'fusion' or 'hybrid', got "
                            f"{self.network!r}")
        if self.loss not in ("autoencoder", "bce"):
            problems.append(f"loss must be 'autoencoder' or 'bce', got {self.loss!r}")
        for name in ("epochs", "steps_per_epoch", "batch_size", "val_patches", "window_pool"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.scratch_per_batch <= self.batch_size:
            problems.append(f"scratch_per_batch must be within 0..batch_size ({self.batch_size})"
                            f", got {self.scratch_per_batch}")
        if self.patch < 2 * WINDOW or self.patch % 64:
            problems.append(f"patch must be a multiple of 64 and at least {2 * WINDOW}, "
                            f"got {self.patch}")
        if not self.lr > 0:
            problems.append(f"lr must be positive, got {self.lr}")
        if problems:
            raise ValueError("; ".join(problems))

    def spec(self):
        if self.network == "fusion":
            single = self.data == "darkfield"
            return FusionSpec(width=self.width, in_channels=1 if single else 24,
                              ba=self.ba, sa=self.sa, ca=self.ca, whiten=single,
                              background_px=self.background_px)
        if self.network == "hybrid":
            return HybridSpec(features=self.features, line_lengths=tuple(self.line_lengths),
                              activation="tanh" if self.loss == "autoencoder" else "sigmoid")
        return UNetSpec(width=self.width, levels=self.levels, nested=self.nested,
                        activation="tanh" if self.loss == "autoencoder" else "sigmoid",
                        input_compression=self.input_compression)


def build_network(network: str, spec: dict) -> torch.nn.Module:
    if network == "unet":
        return GlassUNet(UNetSpec(**spec))
    if network == "fusion":
        return AttentionFusionNet(FusionSpec(**spec))
    if network == "hybrid":
        return HybridNet(HybridSpec(**spec))
    raise CheckpointError(f"unknown network {network!r}")


def _same_weights(spec, ckpt: dict) -> bool:
    """Whether a checkpoint's network has ``spec``'s weights: the same spec, with the defaults
    of settings added since filled in, up to the settings of fixed stages (``FIXED_STAGE``:
    nothing learned depends on them, and fine-tuning adapts the weights to new values)."""
    try:
        theirs = type(spec)(**ckpt["spec"]).to_dict()
    except (TypeError, ValueError):
        return False
    fixed = getattr(spec, "FIXED_STAGE", ())
    ours = spec.to_dict()
    return all(theirs[k] == ours[k] for k in ours if k not in fixed)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a glass-inspect checkpoint (expected format "
                              f"{CHECKPOINT_FORMAT})")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> torch.nn.Module:
    model = build_network(ckpt["network"], ckpt["spec"])
    model.load_state_dict(ckpt["model"])
    return model.eval()


# -- batches ------------------------------------------------------------------------------------
def _tensors(patches: list[D.Patch]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    image, mask, bright = D.stack(patches)
    return torch.from_numpy(image), torch.from_numpy(mask), torch.from_numpy(bright)


# thresholds on the scratch probability searched on the validation windows every epoch
OPERATING_POINTS = tuple(round(0.05 * k, 2) for k in range(1, 20))


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _decisions(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Accuracy, precision, recall and F1 of window decisions against the truth."""
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    n = len(truth)
    return {"accuracy": round((tp + n - tp - fp - fn) / max(1, n), 4),
            "precision": round(tp / max(1, tp + fp), 4),
            "recall": round(tp / max(1, tp + fn), 4),
            "f1": round(2 * tp / max(1, 2 * tp + fp + fn), 4)}


def darkfield_loss(logits: torch.Tensor, labels: torch.Tensor,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over the windows of a batch that are not :data:`FAINT` (a scratch too weak
    to see, :mod:`model.windows`), each times its weight if given (a weighted mean); zero, with a
    gradient, for a batch of faint windows only."""
    seen = (labels != FAINT).to(logits.dtype)
    if weights is not None:
        seen = seen * weights
    per = F.binary_cross_entropy_with_logits(logits, labels.clamp_min(0), reduction="none")
    return (per * seen).sum() / seen.sum().clamp_min(1)  # weights are at least 1


def faint_weights(labels: np.ndarray, visibility: np.ndarray, weight: float) -> np.ndarray:
    """Loss weights (float32): ``weight`` for a scratch window (label 1) whose visibility is
    below :data:`FAINT_WEIGHT_BELOW`, 1 for every other window."""
    faint = (labels == 1) & (visibility < FAINT_WEIGHT_BELOW)
    return np.where(faint, weight, 1.0).astype(np.float32)


def windows(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut 256 x 256 windows with stride 128 -> (windows, labels 0/1)."""
    h, w = image.shape[-2:]
    crops, labels = [], []
    for y in window_origins(h, WINDOW, STRIDE):
        for x in window_origins(w, WINDOW, STRIDE):
            crops.append(image[:, :, y:y + WINDOW, x:x + WINDOW])
            n = mask[:, 0, y:y + WINDOW, x:x + WINDOW].flatten(1).sum(dim=1)
            labels.append((n >= WINDOW_MIN_PIXELS).float())
    return torch.cat(crops), torch.cat(labels)


class Trainer:
    def __init__(self, settings: TrainSettings, cfg: HeadConfig, out_dir: str | Path,
                 progress: bool = True):
        self.s, self.cfg, self.out = settings, cfg, Path(out_dir)
        # under torchrun: this rank's share of each global batch (model.distributed)
        self.ranks = distributed.init()
        self.share = self.ranks.share(settings.batch_size)
        self.progress = progress and self.ranks.is_main
        torch.manual_seed(settings.seed)
        self.spec = settings.spec()
        self.model = build_network(settings.network, self.spec.to_dict())
        if settings.init:
            start = load_checkpoint(settings.init)
            if start["network"] != settings.network or not _same_weights(self.spec, start):
                raise CheckpointError(f"{settings.init}: holds a {start['network']} network "
                                      f"{start['spec']}; --init needs this run's "
                                      f"{settings.network} {self.spec.to_dict()}")
            self.model.load_state_dict(start["model"])
            log.info("starting from the weights of %s (epoch %s)", settings.init, start["epoch"])
        self._train_call = self.ranks.wrap(
            self.model, "forward" if settings.network == "fusion" else "logits")
        darkfield = settings.data == "darkfield"
        # the weak-scratch paper's Adam for its own data, the glass paper's for the six states
        betas = (0.9, 0.999) if darkfield else (0.5, 0.9)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=settings.lr, betas=betas,
                                    eps=1e-8)
        self.epoch = 0
        self.history: list[dict] = []
        self.lr_drops: list[int] = []  # epochs after which the learning rate was divided by 10
        self._val: list[D.Patch] | None = None
        if darkfield:
            self._init_darkfield()
            return
        train_src, val_src = self._sources()
        angles = cfg.illumination.angles_deg
        bits = cfg.camera.bit_depth
        self.sampler = D.PatchSampler(train_src, angles, settings.batch_size,
                                      settings.scratch_per_batch, bit_depth=bits)
        self.val_sampler = D.PatchSampler(val_src, angles, 1, 0, augment=False, noise=False,
                                          bit_depth=bits)

    def _init_darkfield(self) -> None:
        from edge.sim.darkfield import frames_at

        s = self.s
        self.split = image_split(0, s.train_images, s.val_images, 1)
        seeds = train_seeds(s.train_images, s.extra_train_images)
        self.darkfield = frames_at(s.frame_px)
        changes = {}
        if s.extra_peak_dn is not None:
            changes["scratch_peak_dn"] = tuple(float(v) for v in s.extra_peak_dn)
        if s.extra_chain_share is not None:
            changes["chain_share"] = float(s.extra_chain_share)
        if s.extra_texture != "none":
            changes["texture"] = s.extra_texture
        alt = ({"alt_config": dataclasses.replace(self.darkfield, **changes),
                "alt_seeds": seeds[s.train_images:]} if changes else {})
        # every training frame stays rendered: each is rendered once per run, not per visit
        self.sampler = WindowSampler(seeds, self.darkfield, seed=s.seed,
                                     per_image=DARKFIELD_PER_IMAGE, cache_images=len(seeds),
                                     **alt)
        self._val_windows = None
        self.labelled = None
        if s.images:  # a user's labelled frames, mixed with those windows (model.label_windows)
            from model import label_windows as LW

            frames = LW.load_frames(s.images, s.labels, self.spec.to_dict(),
                                    s.images_bit_depth or None, self.darkfield.bayer)
            self.labelled = LW.MixedBatches(LW.LabelledWindows(frames, s.seed,
                                                               bayer=self.darkfield.bayer),
                                            self.sampler, s.sim_share)

    def _sources(self):
        train, val = self._plain_sources()
        if self.s.window_cache:  # validation patches are few and made once: not cached
            import hashlib

            from model.heldout import render_identity

            what = (f"{render_identity(self.cfg)}/sampling-{D.SAMPLING_VERSION}"
                    if not self.s.samples else "\n".join(sorted(self.s.samples)))
            ident = hashlib.sha256(what.encode()).hexdigest()[:12]
            train = D.CachedWindows(train, self.s.window_cache, self.s.window_pool, ident)
        return train, val

    def _plain_sources(self):
        s = self.s
        if s.recorded:
            from model.recorded_labels import training_sources

            return training_sources(self.cfg, s)
        if not s.samples:
            return (D.SimulatedPatches(self.cfg, s.seed, s.patch),
                    D.SimulatedPatches(self.cfg, s.seed + VALIDATION_SEED_OFFSET, s.patch))
        dirs = sorted(s.samples)
        if len(dirs) < 2:
            raise ValueError("training on recorded samples needs at least 2 of them (one is "
                             "held out for validation)")
        n_val = max(1, len(dirs) // 10)  # every tenth, at the end of the sorted list
        return (D.RecordedPatches(dirs[:-n_val], s.seed, s.patch),
                D.RecordedPatches(dirs[-n_val:], s.seed + VALIDATION_SEED_OFFSET, s.patch))

    @property
    def validation_windows(self):
        """The fixed validation window set of the darkfield data (built or read once)."""
        if self._val_windows is None:
            from model.window_eval import heldout_set

            log.info("validation windows: %d from frames %d..%d (made once, then cached)",
                     self.s.val_windows, self.split.validation[0], self.split.validation[-1])
            self._val_windows = heldout_set(self.split.validation, self.s.frame_px,
                                            self.s.val_windows, self.s.window_cache or None)
        return self._val_windows

    def darkfield_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training batch ``step`` (global): windows, labels (1, 0 or FAINT) and loss weights
        (``faint_weight``), flipped (module docstring); a pure function of (settings, step)."""
        b, share = self.s.batch_size, self.share  # this rank's positions of the batch
        if self.labelled is not None:
            x, y, vis = (a[share.start:share.stop] for a in self.labelled.batch(step, b))
        else:
            x, y, vis = self.sampler.batch_visibility(step * b + share.start, len(share))
        w = faint_weights(y, vis, self.s.faint_weight)
        if not self.darkfield.bayer:
            flips = np.random.default_rng([self.s.seed, step, 0xF11B]).random((b, 2)) < 0.5
            flips = flips[share.start:share.stop]
            for k in range(len(share)):
                if flips[k, 0]:
                    x[k] = x[k, :, ::-1, :].copy()  # a copy: source and target share memory
                if flips[k, 1]:
                    x[k] = x[k, :, :, ::-1].copy()
        return (torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.float32)),
                torch.from_numpy(w))

    @property
    def validation(self) -> list[D.Patch]:
        if self._val is None:
            n = self.s.val_patches
            self._val = [self.val_sampler.patch(k, scratch=k % 2 == 0)
                         for k in tqdm(range(n), desc="validation patches", unit="patch",
                                       disable=not self.progress, leave=False)]
        return self._val

    # -- losses ---------------------------------------------------------------------------------
    def loss(self, image: torch.Tensor, mask: torch.Tensor, bright: torch.Tensor):
        """-> (loss, score map or window logits) for a batch."""
        # training through DDP when distributed; validation (rank 0 alone) past it, since
        # DDP's forward is a collective
        net = (self._train_call if self.model.training
               else self.model if self.s.network == "fusion" else self.model.logits)
        if self.s.network == "fusion":
            win, labels = windows(image, mask)
            logits = net(win)
            return F.binary_cross_entropy_with_logits(logits, labels), (logits, labels)
        logits = net(image)
        if self.s.loss == "bce":
            return cross_entropy_loss(logits, mask), torch.sigmoid(logits[0])
        outs = [torch.tanh(z) for z in logits]
        return autoencoder_loss(outs, mask, bright, self.s.alpha), outs[0]

    # -- checkpoints ----------------------------------------------------------------------------
    def _checkpoint(self) -> dict:
        extra = {}
        if self.s.data == "darkfield":
            extra = {"windows": self.sampler.settings(), "lr_drops": list(self.lr_drops)}
        elif self.s.lr_drop_patience:
            extra = {"lr_drops": list(self.lr_drops)}
        return {
            **extra,
            "format": CHECKPOINT_FORMAT,
            "network": self.s.network,
            "spec": self.spec.to_dict(),
            "settings": asdict(self.s),
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "epoch": self.epoch,
            "history": self.history,
            "head_digest": self.cfg.digest(),
            "head_source": self.cfg.source,
            "pipeline": self.cfg.pipeline.model_dump(),
            "parameters": parameter_count(self.model),
            "torch_version": str(torch.__version__),
        }

    def save(self, name: str) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / name
        tmp = path.with_suffix(".tmp")
        torch.save(self._checkpoint(), tmp)
        os.replace(tmp, path)
        return path

    def resume(self) -> bool:
        path = self.out / "last.pt"
        # rank 0's file, sent to every rank: other machines need no copy of it
        ckpt = self.ranks.from_main(load_checkpoint(path) if self.ranks.is_main
                                    and path.exists() else None)
        if ckpt is None:
            return False
        saved = dict(ckpt["settings"])
        mine = asdict(self.s)
        # a setting the checkpoint predates was, in effect, its default; the epoch count may
        # grow, and where the window cache lives changes no window (its pool size does)
        free = ("epochs", "window_cache")
        differ = [f.name for f in fields(TrainSettings)
                  if f.name not in free and saved.get(f.name, _default(f)) != mine[f.name]]
        if differ:
            raise CheckpointError(f"{path}: was trained with other settings ({', '.join(differ)}"
                                  "); resume with the same ones or use another --out")
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.epoch, self.history = int(ckpt["epoch"]), list(ckpt["history"])
        self.lr_drops = [int(e) for e in ckpt.get("lr_drops", [])]
        log.info("resuming %s after epoch %d of %d", path, self.epoch, self.s.epochs)
        return True

    # -- loops ----------------------------------------------------------------------------------
    def train_epoch(self) -> float:
        self.model.train()
        if self.s.freeze_norm or (self.s.freeze_norm is None and self.s.init):
            for m in self.model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        s = self.s
        losses = []
        bar = tqdm(range(s.steps_per_epoch), desc=f"epoch {self.epoch + 1}/{s.epochs}",
                   unit="batch", disable=not self.progress, leave=False)
        for step in bar:
            index = self.epoch * s.steps_per_epoch + step
            if s.data == "darkfield":
                x, y, w = self.darkfield_batch(index)
                loss = darkfield_loss(self._train_call(x), y, w)
            else:
                loss, _ = self.loss(*_tensors(distributed.patch_share(self.sampler, index,
                                                                      self.share)))
            value = self.ranks.mean(loss)  # the global batch's loss; every rank stops alike
            if not math.isfinite(value):
                raise FloatingPointError(f"loss became {value} at epoch {self.epoch + 1} "
                                         f"step {step + 1}; lower the learning rate")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            losses.append(value)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        return float(np.mean(losses))

    @torch.no_grad()
    def validate_darkfield(self) -> dict:
        self.model.eval()
        ws = self.validation_windows
        total = 0.0
        all_logits, all_truth = [], []
        for start in tqdm(range(0, len(ws), DARKFIELD_VAL_BATCH), desc="validation",
                          unit="batch", disable=not self.progress, leave=False):
            labels = ws.labels[start:start + DARKFIELD_VAL_BATCH]
            seen = labels != FAINT  # too weak to see: not scored (model.windows)
            x = torch.from_numpy(ws.images(start, start + DARKFIELD_VAL_BATCH)[seen])
            y = torch.from_numpy(labels[seen] > 0)
            logits = self.model(x)
            total += float(F.binary_cross_entropy_with_logits(logits, y.float(),
                                                              reduction="sum"))
            all_logits.append(logits.numpy())
            all_truth.append(y.numpy())
        logits, truth = np.concatenate(all_logits), np.concatenate(all_truth)
        out = {"val_loss": total / max(1, len(truth)),
               **_decisions(logits >= 0, truth)}  # sigmoid >= 0.5, the runtime's default
        # the operating point that validation favours (F1), for the model card and export
        best = max(OPERATING_POINTS, key=lambda t: (
            _decisions(logits >= _logit(t), truth)["f1"], -abs(t - 0.5)))
        out.update(best_threshold=best,
                   best_threshold_f1=_decisions(logits >= _logit(best), truth)["f1"])
        if self.labelled is not None:
            from model.label_windows import validate_labelled

            out = validate_labelled(self.model, self.labelled.labelled, out, self.s.sim_share)
        return out

    @torch.no_grad()
    def validate(self) -> dict:
        if self.s.data == "darkfield":
            return self.validate_darkfield()
        self.model.eval()
        losses, tally = [], Tally()
        correct = seen = tp = fp = fn = 0
        for k in range(0, len(self.validation), 2):
            image, mask, bright = _tensors(self.validation[k:k + 2])
            loss, out = self.loss(image, mask, bright)
            losses.append(loss.item())
            if self.s.network == "fusion":
                logits, labels = out
                pred = logits > 0
                truth = labels > 0.5
                correct += int((pred == truth).sum())
                seen += int(truth.numel())
                tp += int((pred & truth).sum())
                fp += int((pred & ~truth).sum())
                fn += int((~pred & truth).sum())
                continue
            for score, m in zip(out[:, 0].numpy(), mask[:, 0].numpy(), strict=True):
                tally.add(score, m, self.cfg.pipeline)
        metrics = {"val_loss": float(np.mean(losses))}
        if self.s.network == "fusion":
            metrics.update(accuracy=round(correct / max(1, seen), 4),
                           precision=round(tp / max(1, tp + fp), 4),
                           recall=round(tp / max(1, tp + fn), 4))
        else:
            metrics.update(tally.summary())
        return metrics

    def _maybe_drop_lr(self) -> None:
        """Divide the learning rate by 10 when ``lr_drop_patience`` epochs have passed without
        a lower validation loss since the best epoch or the last drop (the count restarts
        after each drop, so the new rate gets its own patience). Called after the epoch's row
        is in the history and before ``last.pt``, so a resumed run continues the same way."""
        patience = self.s.lr_drop_patience
        if not patience:
            return
        losses = [h["val_loss"] for h in self.history]
        best_epoch = max(i for i, v in enumerate(losses, 1) if v <= min(losses))
        since = max([best_epoch, *self.lr_drops])
        if self.epoch - since >= patience:
            for group in self.opt.param_groups:
                group["lr"] = group["lr"] / 10.0
            self.lr_drops.append(self.epoch)
            log.info("no lower validation loss for %d epochs: learning rate now %.3g",
                     patience, self.opt.param_groups[0]["lr"])

    def run(self, resume: bool = False) -> Path:
        s = self.s
        if resume:
            self.resume()
        log.info("training %s (%s loss, %d parameters) for %d epochs of %d batches of %d "
                 "%s into %s", s.network if s.network != "fusion" else self.spec.variant,
                 s.loss if s.network == "unet" else "bce", parameter_count(self.model),
                 s.epochs, s.steps_per_epoch, s.batch_size,
                 "dark-field windows" if s.data == "darkfield" else "patches", self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        # built once, before the clock of the first epoch; validation is rank 0's
        if s.data == "darkfield" and self.ranks.is_main:
            self.validation_windows  # noqa: B018
        elif self.ranks.is_main:
            self.validation  # noqa: B018
        while self.epoch < s.epochs:
            t0 = time.perf_counter()
            train_loss = self.train_epoch()
            t1 = time.perf_counter()
            # rank 0 validates, every rank keeps its metrics (the same history and lr drops)
            metrics = self.ranks.from_main(self.validate() if self.ranks.is_main else None)
            self.epoch += 1
            row = {"epoch": self.epoch, "train_loss": train_loss, **metrics,
                   "train_s": round(t1 - t0, 1), "val_s": round(time.perf_counter() - t1, 1)}
            if s.lr_drop_patience:
                row["lr"] = self.opt.param_groups[0]["lr"]
            best = min((h["val_loss"] for h in self.history), default=math.inf)
            self.history.append(row)
            self._maybe_drop_lr()
            if not self.ranks.is_main:  # checkpoints and history are rank 0's
                continue
            self.save("last.pt")
            if row["val_loss"] <= best:
                self.save("best.pt")
            (self.out / "history.json").write_text(json.dumps(self.history, indent=1) + "\n")
            plot_history(self.history, self.out / "loss.png")
            log.info("epoch %d/%d: train loss %.4f, validation %s", self.epoch, s.epochs,
                     train_loss, _describe(metrics))
        self.ranks.barrier()  # every rank returns once rank 0's files are written
        return self.out / "best.pt"


def _default(f):
    """The default value of a settings field (for checkpoints written before it existed)."""
    from dataclasses import MISSING

    return f.default_factory() if f.default_factory is not MISSING else f.default


def _describe(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in metrics.items() if v is not None)


def plot_history(history: list[dict], path: Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(ep, [h["train_loss"] for h in history], "o-", label="training")
    ax.plot(ep, [h["val_loss"] for h in history], "s-", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title or "loss per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_runs(runs: dict[str, list[dict]], path: Path) -> Path:
    """Side by side for several runs: each run's losses (own scale), and validation recall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs) + 1, figsize=(4.2 * (len(runs) + 1), 3.4), dpi=100)
    for ax, (name, hist) in zip(axes, runs.items(), strict=False):
        ep = [h["epoch"] for h in hist]
        ax.plot(ep, [h["train_loss"] for h in hist], "o-", ms=3, label="training")
        ax.plot(ep, [h["val_loss"] for h in hist], "s-", ms=3, label="validation")
        ax.set_title(f"{name}: loss")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    ax = axes[-1]
    for name, hist in runs.items():
        ep = [h["epoch"] for h in hist]
        ax.plot(ep, [h["pixel_recall"] or 0 for h in hist], "o-", ms=3, label=f"{name} pixel")
        ax.plot(ep, [h["scratch_recall"] or 0 for h in hist], "s--", ms=3,
                label=f"{name} scratch")
    ax.set_title("validation recall at T_low / after DBSCAN")
    ax.set_xlabel("epoch")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
