"""Explicit INT8 quantization of the ONNX model (Q/DQ), for strongly typed TensorRT builds.

TensorRT 11 removed implicit INT8 (builder flag + calibrator): the quantization scales must be in
the ONNX graph as QuantizeLinear / DequantizeLinear pairs, and a strongly typed build follows
them. We write them with ONNX Runtime's static quantizer, in the form TensorRT documents for
explicit quantization: symmetric INT8 for activations and weights (zero point 0), per-channel
weights, Q/DQ format. The calibration batches come from recorded samples through the runtime's
own preprocessing (:mod:`export.quantization_data`).

Activation ranges are measured here, not by ONNX Runtime's calibrators: its entropy and
percentile calibrators keep every batch's intermediate outputs until the last batch (about
330 MiB per 512 px tile for the shipped model, 21 GiB for the 64 default tiles), which no Orin
has. Instead, :func:`collect_ranges` runs the model with every calibrated activation as an
output, one tile at a time (a batch is split into its tiles), reduces each output at once to
streaming statistics and drops it before the next tile:

* per tensor, the running minimum and maximum;
* for ``entropy`` and ``percentile``, a histogram of ``|x|`` with :data:`HIST_BINS` equal bins
  over ``[0, top)``, ``top`` the smallest power of two strictly above the largest ``|x|`` seen so
  far (so a value equal to a power of two opens the next one: it belongs to the bin that starts
  there, not to the last bin below it). When a tile raises ``top``, it doubles and adjacent bins
  merge pairwise, which is exact (a bin ``[k w, (k + 1) w)`` lies whole in bin ``k // 2`` of
  width ``2 w``), so the merged histogram is the one all tiles together would give, in any
  order.

Memory is therefore one tile's activations (plus ONNX Runtime's working memory for one tile)
and :class:`RangeCollector`'s fixed state, 16 KiB per tensor: it does not grow with the number
of tiles or the batch size. The batches are read once, in order, so a generator of batches
only ever holds one. (The caller's list of batches is the caller's: the ``export qdq`` command
loads all its tiles before calling, 25 MiB per tile.)

The ranges: ``minmax`` the extremes; ``percentile`` the 99.999th percentile of ``|x|``;
``entropy`` the threshold minimizing the KL divergence between the clipped histogram and its
128-level quantization, the search TensorRT's entropy calibrator makes, but only among
thresholds that clip at most 0.01 % of the values (:data:`ENTROPY_MIN_KEPT`). ONNX Runtime's
entropy calibrator, used here before, searched a 128-bin histogram at 128 levels, which leaves
the extremes as the only candidate: for the shipped model its Q/DQ file was the one ``minmax``
gives. On recorded samples (64 tiles; 6 full RoIs, 2 scratches, checked with ``export
parity``), ``percentile`` and this ``entropy`` kept the float model's defects, ``percentile``
closest (so it is the default); ``minmax``, whose ranges follow the brightest tiles, added false
defects.

The ranges reach ONNX Runtime's quantizer as a calibration cache
(``quantize_static(calibration_cache_path=...)``) where the installed version has one; older
versions (the Jetson image's pinned 1.23) get them as per-tensor ``rmin``/``rmax`` overrides and
calibrate one tile of their own, whose ranges the overrides replace. ONNX Runtime adjusts the
ranges it calibrated before it quantizes (``adjust_tensor_ranges``: the input of a Relu or Clip
takes the range of its output, where that node is its only reader; a Softmax output is
``[0, 1]``), but an override replaces the adjusted range, so on that path
:func:`adjust_ranges` makes the same adjustment first. Both paths give the same file. (Without
it, a Conv feeding a Relu was quantized over the Conv's whole output, negative side included,
which the Relu then discards: a coarser scale, 0.147 against 0.123 on the Conv-Relu model of
the tests.)

The last layers stay in float (:func:`float_tail`): each graph output's producer, and back from
it through activations and reshapes up to and including the first other node (for the shipped
model the head convolution and its sigmoid), so neither the scores nor the sigmoid's input are
cut to 127 levels. TensorRT runs that single-channel convolution in float; it is a negligible
part of the network.

The nested weights are folded into plain initializers first (``quant_pre_process``): a
quantizer can only give per-channel scales to a weight it sees as a constant. The quantized file
is therefore larger than the float one; the engine built from it is not.

The Q/DQ model also runs on ONNX Runtime, so its accuracy is checked here, on the CPU, before any
GPU sees it.
"""

from __future__ import annotations

import inspect
import math
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

METHODS = ("entropy", "minmax", "percentile")
HIST_BINS = 2048  # histogram bins over [0, top]
ENTROPY_LEVELS = 128  # quantized bins of the entropy search (INT8: 127 levels and zero)
# The entropy search only considers thresholds that clip at most this share of the values.
# Unrestricted, it may pick one inside the bulk of an offset distribution, where clipping costs
# no KL divergence: the shipped model's log-compressed input got its background level as
# threshold (100 % clipped) and the INT8 model lost both scratches of the recorded samples.
ENTROPY_MIN_KEPT = 0.9999
PERCENTILE = 99.999
_CHUNK = 1 << 20  # elements binned at a time: bounds the temporaries of a histogram update

# Followed back from a graph output, these keep the float tail going; any other node ends it
# (and is itself kept in float).
_PASS_THROUGH = frozenset({
    "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "HardSigmoid", "Relu", "Clip", "Identity", "Cast",
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten",
})
_FLOAT_TYPES = (1, 10)  # TensorProto.FLOAT, FLOAT16


class _AbsHistogram:
    """Counts of ``|x|`` in ``bins`` equal bins over ``[0, top)``; ``top`` is 0 while every value
    seen is 0 (counted in bin 0), else the smallest power of two above every value seen,
    doubled as needed. Strictly above: with ``top`` equal to a value, that value would be
    clamped into the last bin, and after a doubling it would sit in the bin below the one
    binning everything at the new ``top`` gives."""

    __slots__ = ("counts", "top")

    def __init__(self, bins: int):
        self.counts = np.zeros(bins, np.int64)
        self.top = 0.0

    def _grow(self, amax: float) -> None:
        _, exp = math.frexp(amax)  # amax = mant * 2**exp, 0.5 <= mant < 1: amax < 2**exp
        top = math.ldexp(1.0, exp)
        if self.top > 0:
            bins = self.counts.size
            f = int(top / self.top)
            merged = np.zeros_like(self.counts)
            if f >= bins:
                merged[0] = self.counts.sum()
            else:
                merged[:bins // f] = self.counts.reshape(bins // f, f).sum(axis=1)
            self.counts = merged
        self.top = top

    def add(self, x: np.ndarray, amax: float) -> None:
        if amax > self.top:
            self._grow(amax)
        flat = x.reshape(-1)
        if self.top == 0:
            self.counts[0] += flat.size
            return
        bins = self.counts.size
        # a power of two: |x| * scale is exact (float64 where float32 would overflow)
        dtype = np.float32 if bins / self.top < 2.0 ** 100 else np.float64
        scale = dtype(bins / self.top)
        for s in range(0, flat.size, _CHUNK):
            c = np.abs(flat[s:s + _CHUNK], dtype=dtype)
            c *= scale  # < bins: |x| < top, and the product is exact
            np.minimum(c, bins - 1, out=c)  # a float64 |x| just below top may round up to it
            self.counts += np.bincount(c.astype(np.intp), minlength=bins)

    @property
    def width(self) -> float:
        return self.top / self.counts.size


class RangeCollector:
    """Streaming per-tensor statistics: min, max and (``histogram``) an ``|x|`` histogram.

    Its state is fixed at creation (:meth:`state_nbytes`): :meth:`update` folds a tensor in and
    keeps no reference to it.
    """

    def __init__(self, names: Iterable[str], histogram: bool, bins: int = HIST_BINS):
        if bins < ENTROPY_LEVELS or bins & (bins - 1):
            raise ValueError(f"bins must be a power of two >= {ENTROPY_LEVELS}, got {bins}")
        self.names = tuple(dict.fromkeys(names))
        self.lo = dict.fromkeys(self.names, math.inf)
        self.hi = dict.fromkeys(self.names, -math.inf)
        self.hist = {n: _AbsHistogram(bins) for n in self.names} if histogram else {}

    def __contains__(self, name: str) -> bool:
        return name in self.lo

    def update(self, name: str, x: np.ndarray) -> None:
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"calibration: tensor {name!r} has non-finite values")
        self.lo[name] = min(self.lo[name], lo)
        self.hi[name] = max(self.hi[name], hi)
        if self.hist:
            self.hist[name].add(x, max(-lo, hi))

    def state_nbytes(self) -> int:
        """Bytes of arrays held: the histograms (min and max are two floats a tensor)."""
        return sum(h.counts.nbytes for h in self.hist.values())

    def ranges(self, method: str) -> dict[str, tuple[float, float]]:
        """``(lowest, highest)`` per tensor seen: the extremes (``minmax``) or a symmetric
        threshold (``entropy``, ``percentile``)."""
        if method not in METHODS:
            raise ValueError(f"calibration method must be one of {METHODS}, got {method!r}")
        out = {}
        for n in self.names:
            lo, hi = self.lo[n], self.hi[n]
            if lo > hi:
                continue  # never seen
            if method == "minmax":
                out[n] = (lo, hi)
                continue
            if not self.hist:
                raise ValueError(f"{method!r} needs a RangeCollector with histograms")
            amax = max(-lo, hi)
            h = self.hist[n]
            t = (percentile_threshold(h.counts, h.width) if method == "percentile"
                 else entropy_threshold(h.counts, h.width))
            t = min(t, amax)
            out[n] = (-t, t)
        return out


def percentile_threshold(counts: np.ndarray, width: float, percentile: float = PERCENTILE
                         ) -> float:
    """Upper edge of the bin where the cumulative count of ``|x|`` reaches ``percentile``."""
    cs = np.cumsum(counts)
    if cs[-1] == 0:
        return 0.0
    k = int(np.searchsorted(cs, cs[-1] * percentile / 100.0))
    return (min(k, counts.size - 1) + 1) * width


def entropy_threshold(counts: np.ndarray, width: float, levels: int = ENTROPY_LEVELS,
                      min_kept: float = ENTROPY_MIN_KEPT) -> float:
    """The clipping threshold of least information loss, over a histogram of ``|x|``.

    For each candidate ``i`` bins (at least ``levels``, and enough to keep ``min_kept`` of the
    values unclipped, up to the last non-empty bin), the reference ``P`` is the first ``i`` bins
    with everything beyond added to the last; ``Q`` quantizes those ``i`` bins (without the
    outliers) into ``levels`` groups, each group's count spread evenly over its non-empty bins.
    The threshold is ``i * width`` for the ``i`` of least ``KL(P || Q)``.
    All candidates are evaluated at once from prefix sums, in closed form:
    ``N * KL = sum P log P - N log N - sum_g T_g log(S_g / n_g) + N log C``, with ``S_g`` and
    ``n_g`` the count and non-empty bins of group ``g``, ``T_g = S_g`` plus the outliers for the
    last group, ``C`` the count below the threshold and ``N`` the total.
    """
    h = counts.astype(np.float64)
    nonzero = np.flatnonzero(h)
    if nonzero.size == 0:
        return 0.0
    last = int(nonzero[-1]) + 1  # bins up to the largest value
    if last <= levels:
        return last * width  # fits the INT8 grid unclipped
    n_total = h.sum()
    cs = np.concatenate(([0.0], np.cumsum(h)))
    nzc = np.concatenate(([0], np.cumsum(h > 0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        hlogh = np.where(h > 0, h * np.log(h), 0.0)
    plogp_prefix = np.concatenate(([0.0], np.cumsum(hlogh)))

    first = max(levels, int(np.searchsorted(cs, min_kept * n_total)))
    if first >= last:
        return last * width
    i = np.arange(first, last + 1)  # candidate bin counts
    k = np.arange(levels + 1)
    bounds = (i[:, None] * k[None, :] + levels - 1) // levels  # ceil(k * i / levels)
    s = cs[bounds[:, 1:]] - cs[bounds[:, :-1]]  # group counts (candidates x levels)
    nz = nzc[bounds[:, 1:]] - nzc[bounds[:, :-1]]
    below = cs[i]
    outliers = n_total - below
    t = s.copy()
    t[:, -1] += outliers
    last_bin = h[i - 1] + outliers
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = plogp_prefix[i - 1] + np.where(last_bin > 0, last_bin * np.log(last_bin), 0.0)
        plogq = np.where(t > 0, t * np.log(s / np.maximum(nz, 1)), 0.0).sum(axis=1)
        kl = plogp - n_total * np.log(n_total) - plogq + n_total * np.log(below)
    # outliers piled into an empty last bin: Q has nothing where P has them
    kl[(outliers > 0) & (h[i - 1] == 0)] = np.inf
    kl[~np.isfinite(kl)] = np.inf
    if not np.isfinite(kl).any():
        return last * width
    return int(i[int(np.argmin(kl))]) * width


def float_tail(model) -> tuple[list[str], list[str]]:
    """Nodes (names) and tensors to keep in float at the graph outputs.

    From each graph output: its producer, then, while the node just taken is an activation or a
    reshape (:data:`_PASS_THROUGH`), the producer of its data input. The walk ends with the first
    other node, itself kept: the layer computing the logits (a Conv for the U-Net).
    """
    producer = {o: n for n in model.graph.node for o in n.output if o}
    nodes: list[str] = []
    tensors: list[str] = []
    taken: set[int] = set()
    for out in model.graph.output:
        name = out.name
        while name in producer:
            node = producer[name]
            if id(node) in taken:
                break
            taken.add(id(node))
            nodes.append(node.name)
            tensors.append(name)
            if node.op_type not in _PASS_THROUGH or not node.input:
                break
            name = node.input[0]
    return nodes, tensors


def adjust_ranges(model, ranges: dict[str, tuple[float, float]], exclude: Iterable[str] = ()
                  ) -> dict[str, tuple[float, float]]:
    """``ranges`` as ONNX Runtime's quantizer adjusts its calibrated ranges before quantizing
    (``BaseQuantizer.adjust_tensor_ranges``, onnxruntime/quantization/base_quantizer.py), in
    node order as it does: the input of a Relu or Clip takes its output's range where that node
    is the input's only reader and both are measured; a Softmax's output is ``[0, 1]``. Nodes
    named in ``exclude`` (left in float) are not adjusted, as ONNX Runtime skips the nodes it
    does not quantize. A new dict; ``ranges`` is left as it is."""
    out = dict(ranges)
    readers = Counter(name for node in model.graph.node for name in node.input if name)
    skip = set(exclude)
    for node in model.graph.node:
        if node.name in skip:
            continue
        if node.op_type in ("Clip", "Relu"):
            src, dst = node.input[0], node.output[0]
            if readers[src] == 1 and src in out and dst in out:
                out[src] = out[dst]
        elif node.op_type == "Softmax":
            out[node.output[0]] = (0.0, 1.0)
    return out


def _name_nodes(model) -> bool:
    """Give unnamed nodes unique names (``nodes_to_exclude`` goes by name); True if any."""
    taken = {n.name for n in model.graph.node}
    changed = False
    for i, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in taken:
                name += "_"
            n.name = name
            taken.add(name)
            changed = True
    return changed


def _float_tensors(model) -> dict:
    """Value infos of the float tensors that are node inputs or outputs, not initializers."""
    g = model.graph
    infos = {vi.name: vi for vi in list(g.value_info) + list(g.output) + list(g.input)}
    inits = {i.name for i in g.initializer}
    out = {}
    for node in g.node:
        for name in list(node.input) + list(node.output):
            vi = infos.get(name)
            if (vi is not None and name not in inits and vi.type.HasField("tensor_type")
                    and vi.type.tensor_type.elem_type in _FLOAT_TYPES):
                out[name] = vi
    return out


def model_input(model) -> str:
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if len(names) != 1:
        raise ValueError(f"INT8 quantization expects a model with one input, got {names}")
    return names[0]


def collect_ranges(model, batches: Iterable[np.ndarray], stats: RangeCollector,
                   keep_first: bool = False) -> np.ndarray | None:
    """Run ``model`` (a ModelProto with shapes inferred) tile by tile over ``batches`` and fold
    every tensor in ``stats`` into it. Returns the first tile when ``keep_first``."""
    import onnxruntime as ort

    input_name = model_input(model)
    infos = _float_tensors(model)
    outputs = [n for n in stats.names if n != input_name]
    missing = [n for n in outputs if n not in infos]
    if missing:
        raise ValueError(f"calibration: no float tensors named {missing}")
    aug = type(model)()
    aug.CopyFrom(model)
    del aug.graph.output[:]
    aug.graph.output.extend(infos[n] for n in outputs)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as built
    sess = ort.InferenceSession(aug.SerializeToString(), so, providers=["CPUExecutionProvider"])
    del aug

    first = None
    tiles = 0
    for batch in batches:
        b = np.asarray(batch)
        for j in range(len(b)):
            tile = np.ascontiguousarray(b[j:j + 1], np.float32)
            if keep_first and first is None:
                first = tile.copy()
            if input_name in stats:
                stats.update(input_name, tile)
            res = sess.run(outputs, {input_name: tile})
            for k, name in enumerate(outputs):
                x, res[k] = res[k], None  # drop each output once folded in
                stats.update(name, x)
                del x
            del res, tile
            tiles += 1
        del b, batch  # before the iterator makes the next batch
    if tiles == 0:
        raise ValueError("INT8 quantization needs at least one calibration batch")
    return first


def quantize_qdq(onnx_path: str | Path, out: str | Path, batches: Iterable[np.ndarray],
                 method: str = "percentile") -> Path:
    """Write ``out``: ``onnx_path`` with INT8 Q/DQ, the activation ranges measured on
    ``batches`` (arrays ``(n, C, H, W)`` for the model's one input, read once, in order: a
    generator is fine) by ``method``. Memory: see the module's docstring."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ValueError(f"calibration method must be one of {sorted(methods)}, got {method!r}")

    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        folded = Path(tmp) / "folded.onnx"
        quant_pre_process(str(onnx_path), str(folded), skip_symbolic_shape=True)
        model = onnx.load(str(folded))
        if _name_nodes(model):
            onnx.save(model, str(folded))
        model = onnx.shape_inference.infer_shapes(model)
        tail_nodes, tail_tensors = float_tail(model)
        keep_float = set(tail_tensors)
        names = [n for n in _float_tensors(model) if n not in keep_float]
        input_name = model_input(model)
        stats = RangeCollector(names, histogram=method != "minmax")
        first = collect_ranges(model, batches, stats, keep_first=not _has_calibration_cache())
        ranges = stats.ranges(method)
        if first is not None:  # overrides: they replace what ONNX Runtime would adjust
            ranges = adjust_ranges(model, ranges, tail_nodes)
        del model
        partial = out.with_name(out.name + ".partial")
        _write_qdq(folded, partial, ranges, methods[method], tail_nodes, Path(tmp), input_name,
                   first)
        bad = float_tail_violations(onnx.load(str(partial)))
        if bad:
            partial.unlink()
            raise RuntimeError(f"INT8 quantization left Q/DQ on the float tail: {bad}")
        partial.replace(out)
    return out


def _has_calibration_cache() -> bool:
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def _write_qdq(folded: Path, out: Path, ranges: dict[str, tuple[float, float]], calib_method,
               exclude: list[str], tmp: Path, input_name: str,
               first_tile: np.ndarray | None) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    options = {"ActivationSymmetric": True, "WeightSymmetric": True}
    kwargs = dict(quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                  weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=list(exclude))
    f32 = {n: (np.array(lo, np.float32), np.array(hi, np.float32))
           for n, (lo, hi) in ranges.items()}
    if first_tile is None:
        from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

        cache = tmp / "ranges.json"
        save_tensors_data(TensorsData(calib_method, {
            n: TensorData(lowest=lo, highest=hi) for n, (lo, hi) in f32.items()}), cache)
        quantize_static(str(folded), str(out), None, calibrate_method=calib_method,
                        extra_options=options, calibration_cache_path=str(cache), **kwargs)
        return
    # An ONNX Runtime without a calibration cache: its own calibration sees one tile; every
    # tensor we measured overrides that range.
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod

    class OneTile(CalibrationDataReader):
        def __init__(self, name: str, tile: np.ndarray):
            self._feeds = iter([{name: tile}])

        def get_next(self):
            return next(self._feeds, None)

    options["TensorQuantOverrides"] = {n: [{"rmin": lo, "rmax": hi}] for n, (lo, hi) in f32.items()}
    quantize_static(str(folded), str(out), OneTile(input_name, first_tile),
                    calibrate_method=CalibrationMethod.MinMax, extra_options=options, **kwargs)


def float_tail_violations(model) -> list[str]:
    """Tensors of the float tail (:func:`float_tail`, the graph outputs first) that a
    QuantizeLinear reads or a DequantizeLinear writes; empty when the tail is float. (A tail
    layer may read a dequantized input: it computes in float all the same.)"""
    _, tensors = float_tail(model)
    g = model.graph
    read = {n.input[0] for n in g.node if n.op_type == "QuantizeLinear"}
    written = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [t for t in tensors if t in read or t in written]
