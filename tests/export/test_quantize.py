"""INT8 Q/DQ quantization: the float tail, bounded calibration memory, the range statistics."""

import weakref

import numpy as np
import pytest

from tests.conftest import UNET_MODEL

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _batches(n: int, batch: int = 1, side: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [rng.random((batch, 24, side, side), dtype=np.float32) for _ in range(n)]


def _graph_maps(model):
    producer = {o: n for n in model.graph.node for o in n.output}
    quantized = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    return producer, quantized


def _is_dq(producer, name) -> bool:
    return name in producer and producer[name].op_type == "DequantizeLinear"


@pytest.mark.parametrize("method", ["entropy", "minmax", "percentile"])
def test_scores_and_the_sigmoid_input_stay_float(tmp_path, method):
    from export.quantize import quantize_qdq

    out = quantize_qdq(UNET_MODEL, tmp_path / "m.qdq.onnx", _batches(2), method)
    m = onnx.load(str(out))
    producer, quantized = _graph_maps(m)
    sigmoid = producer["scores"]
    assert sigmoid.op_type == "Sigmoid"  # not a DequantizeLinear
    head = producer[sigmoid.input[0]]
    assert head.op_type == "Conv"  # the logits come straight from the float head convolution
    assert {"scores", sigmoid.input[0]}.isdisjoint(quantized)
    assert not _is_dq(producer, head.input[1])  # its weights too: the head is not quantized
    # everything before the head is still INT8: every other convolution reads Q/DQ tensors
    convs = [n for n in m.graph.node if n.op_type == "Conv" and n is not head]
    assert len(convs) == 40
    assert all(_is_dq(producer, c.input[0]) and _is_dq(producer, c.input[1]) for c in convs)


def _tanh_model(path):
    """frames -> Conv -> Relu -> Conv -> Tanh -> y, nodes unnamed: the tail is found by
    structure."""
    rng = np.random.default_rng(3)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(0.1 * rng.standard_normal((1, 4, 3, 3)).astype(np.float32),
                                 "w2")
    nodes = [helper.make_node("Conv", ["frames", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w2"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Tanh", ["c"], ["y"])]
    g = helper.make_graph(nodes, "tail", [helper.make_tensor_value_info(
        "frames", TensorProto.FLOAT, ["n", 2, "h", "w"])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["n", 1, "h", "w"])], [w1, w2])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, str(path))
    return path


def test_final_activation_found_by_graph_structure(tmp_path):
    from export.quantize import quantize_qdq

    x = [np.random.default_rng(1).standard_normal((2, 2, 32, 32)).astype(np.float32)]
    out = quantize_qdq(_tanh_model(tmp_path / "t.onnx"), tmp_path / "t.qdq.onnx", x, "minmax")
    m = onnx.load(str(out))
    producer, quantized = _graph_maps(m)
    assert producer["y"].op_type == "Tanh" and producer["c"].op_type == "Conv"
    assert {"y", "c"}.isdisjoint(quantized)
    first = next(n for n in m.graph.node if n.op_type == "Conv" and n.input[0] != "b")
    assert _is_dq(producer, first.input[0])  # the first layer is quantized
    # the output is not on an INT8 grid (at most 255 values) and still follows the float model
    ref = ort.InferenceSession(str(tmp_path / "t.onnx")).run(None, {"frames": x[0]})[0]
    # The file as its operators define it (what TensorRT runs): ONNX Runtime's default level
    # fuses Q/DQ into its own int8 kernels, which on an x86 CPU with AVX2 but no VNNI saturate
    # the u8 x s8 products (VPMADDUBSW; its quantization docs say so): a 1.08 error on this model
    # that is no property of the file.
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    got = ort.InferenceSession(str(out), so).run(None, {"frames": x[0]})[0]
    assert len(np.unique(got)) > 1000 and np.abs(got - ref).max() < 0.1


def test_calibration_keeps_no_earlier_tile_outputs(tmp_path, monkeypatch):
    """Each run's outputs are gone when the next run starts: memory is one tile's, whatever the
    number of batches. ONNX Runtime's own entropy calibrator keeps them all."""
    from export.quantize import quantize_qdq

    real_run = ort.InferenceSession.run
    refs: list = []
    alive_at_call: list[int] = []

    def run(self, output_names, input_feed, *args, **kwargs):
        alive_at_call.append(sum(r() is not None for r in refs))
        res = real_run(self, output_names, input_feed, *args, **kwargs)
        refs.extend(weakref.ref(a) for a in res)
        return res

    monkeypatch.setattr(ort.InferenceSession, "run", run)
    gen = (b for b in _batches(3, batch=2, side=32))  # read once: a generator is enough
    quantize_qdq(UNET_MODEL, tmp_path / "m.qdq.onnx", gen, "entropy")
    assert max(alive_at_call) == 0, alive_at_call
    assert len(alive_at_call) >= 6  # a batch of 2 runs as 2 tiles


def test_range_collector_state_does_not_grow():
    from export.quantize import HIST_BINS, RangeCollector

    rng = np.random.default_rng(5)
    stats = RangeCollector(["a", "b"], histogram=True)
    seen = []
    for k in range(12):
        x = (rng.standard_normal((3, 7, 11)) * 2.0 ** (k % 5 - 2)).astype(np.float32)
        stats.update("a", x)
        stats.update("b", np.abs(x))
        seen.append(x)
        assert stats.state_nbytes() == 2 * HIST_BINS * 8
        held = [v for v in vars(stats).values() if isinstance(v, np.ndarray)]
        assert not held  # only the per-tensor histograms (and two floats) are kept
    allx = np.concatenate([s.ravel() for s in seen])
    assert stats.lo["a"] == allx.min() and stats.hi["a"] == allx.max()
    h = stats.hist["a"]
    assert h.counts.sum() == allx.size
    # growing the range merges bins exactly: the same as binning everything at the final range
    once = np.bincount(np.minimum(np.abs(allx) * np.float32(HIST_BINS / h.top), HIST_BINS - 1)
                       .astype(np.intp), minlength=HIST_BINS)
    assert np.array_equal(h.counts, once)
    assert np.array_equal(stats.hist["b"].counts, h.counts)


def _kl_direct(counts, levels):
    """KL(P || Q) per candidate bin count, computed bin by bin."""
    h = counts.astype(float)
    last = np.flatnonzero(h)[-1] + 1
    out = {}
    for i in range(levels, last + 1):
        ref = h[:i]
        p = ref.copy()
        p[-1] += h[i:].sum()
        g = np.arange(i) * levels // i
        s = np.bincount(g, ref, levels)
        nz = np.bincount(g, ref > 0, levels)
        q = np.where(ref > 0, s[g] / np.maximum(nz[g], 1), 0.0)
        p, q = p / p.sum(), q / q.sum()
        m = p > 0
        out[i] = np.inf if (q[m] == 0).any() else float(np.sum(p[m] * np.log(p[m] / q[m])))
    return out


def test_entropy_threshold_is_the_least_kl_divergence():
    from export.quantize import entropy_threshold

    rng = np.random.default_rng(2)
    for trial in range(4):
        counts = rng.poisson(np.exp(-np.arange(512) / 40.0) * 1e4).astype(np.int64)
        counts[rng.integers(300, 512, 3)] += 2  # sparse outliers, some bins between them empty
        if trial % 2:
            counts[200:260] = 0
        kl = _kl_direct(counts, 128)
        best = min(kl, key=lambda i: (kl[i], i))
        assert entropy_threshold(counts, 0.5, 128, min_kept=0.0) == best * 0.5
        # by default, only thresholds that keep 99.99 % of the values unclipped compete
        kept = np.cumsum(counts) / counts.sum()
        allowed = {i: v for i, v in kl.items() if kept[i - 1] >= 0.9999}
        if allowed:
            best = min(allowed, key=lambda i: (allowed[i], i))
            assert entropy_threshold(counts, 0.5, 128) == best * 0.5


def test_entropy_does_not_clip_the_bulk_of_an_offset_distribution():
    """All values in 0.15 .. 1 (the shipped model's log-compressed input): clipping at the
    background level costs no KL divergence, and would flatten every bright (defect) pixel."""
    from export.quantize import RangeCollector

    rng = np.random.default_rng(6)
    x = np.clip(0.15 + rng.exponential(0.02, 500_000), 0, 1).astype(np.float32)
    x[:300] = rng.uniform(0.4, 1.0, 300)  # the rare bright pixels
    stats = RangeCollector(["log_in"], histogram=True)
    stats.update("log_in", x)
    lo, hi = stats.ranges("entropy")["log_in"]
    assert np.mean(np.abs(x) > hi) <= 1e-4 and hi > 0.4


def test_ranges_by_method():
    from export.quantize import RangeCollector

    rng = np.random.default_rng(4)
    x = rng.standard_normal(200_000).astype(np.float32)
    x[:20] = 40.0  # a few outliers far out
    stats = RangeCollector(["t"], histogram=True)
    for part in np.array_split(x, 5):
        stats.update("t", part)
    mm = stats.ranges("minmax")["t"]
    ent = stats.ranges("entropy")["t"]
    pct = stats.ranges("percentile")["t"]
    assert mm == (float(x.min()), 40.0)
    assert ent[0] == -ent[1] and 2.0 < ent[1] < 40.0  # entropy clips the outliers
    assert pct[0] == -pct[1] and 2.0 < pct[1] <= 40.0


def test_without_a_calibration_cache_the_same_model(tmp_path, monkeypatch):
    """Older ONNX Runtimes have no calibration cache: there the ranges go in as overrides."""
    import export.quantize as q

    if not q._has_calibration_cache():
        pytest.skip("this ONNX Runtime has no calibration cache: the override path is the only one")
    batches = _batches(1)
    a = q.quantize_qdq(UNET_MODEL, tmp_path / "a.onnx", batches, "entropy")
    monkeypatch.setattr(q, "_has_calibration_cache", lambda: False)
    b = q.quantize_qdq(UNET_MODEL, tmp_path / "b.onnx", batches, "entropy")
    ma, mb = onnx.load(str(a)), onnx.load(str(b))
    assert [n.op_type for n in ma.graph.node] == [n.op_type for n in mb.graph.node]
    ia = {i.name: numpy_helper.to_array(i) for i in ma.graph.initializer}
    ib = {i.name: numpy_helper.to_array(i) for i in mb.graph.initializer}
    assert ia.keys() == ib.keys()
    assert all(np.array_equal(ia[k], ib[k]) for k in ia)


def test_no_tiles_is_refused(tmp_path):
    from export.quantize import quantize_qdq

    with pytest.raises(ValueError, match="at least one calibration batch"):
        quantize_qdq(UNET_MODEL, tmp_path / "m.onnx", iter([]), "entropy")
    with pytest.raises(ValueError, match="calibration method"):
        quantize_qdq(UNET_MODEL, tmp_path / "m.onnx", _batches(1), "kl")


@pytest.mark.parametrize("first", [1.0, 0.5, 2.0 ** -20, 4.0])
def test_histogram_merge_is_exact_for_a_value_equal_to_an_earlier_power_of_two(first):
    """A tile whose largest |x| is a power of two, then tiles that raise the range: the value
    lands in the bin binning everything at the final range gives (it used to be clamped into
    the last bin of a range ending at it, and stayed one bin low after the merge)."""
    from export.quantize import HIST_BINS, RangeCollector

    rng = np.random.default_rng(8)
    tiles = [np.array([first, -first, first / 3, 0.0], np.float32),
             np.array([first * 1.5, first * 0.75], np.float32),
             (rng.standard_normal(1000) * first * 5).astype(np.float32)]
    stats = RangeCollector(["t"], histogram=True)
    for t in tiles:
        stats.update("t", t)
    h = stats.hist["t"]
    allx = np.abs(np.concatenate(tiles))
    assert allx.max() < h.top <= 2 * allx.max()  # strictly above the largest value
    once = np.bincount((allx * np.float32(HIST_BINS / h.top)).astype(np.intp),
                       minlength=HIST_BINS)
    assert np.array_equal(h.counts, once)
    k = int(first * HIST_BINS / h.top)  # the bin that starts at the first tile's top
    assert h.counts[k] >= 2 and h.counts[k - 1] == np.sum(
        (allx >= (k - 1) * h.width) & (allx < k * h.width))


def _conv_relu_model(path):
    """frames -> Conv (bias -2: its output mostly negative) -> Relu -> Conv -> Sigmoid -> y.
    The Relu discards the Conv's negative side, so the Conv's output needs only the Relu's
    range."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.full(4, -2.0, np.float32), "b1"),
             numpy_helper.from_array(0.1 * rng.standard_normal((1, 4, 3, 3)).astype(np.float32),
                                     "w2")]
    nodes = [helper.make_node("Conv", ["frames", "w1", "b1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w2"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c"], ["y"])]
    g = helper.make_graph(nodes, "conv_relu", [helper.make_tensor_value_info(
        "frames", TensorProto.FLOAT, ["n", 2, "h", "w"])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["n", 1, "h", "w"])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, str(path))
    return path


def _activation_scales(path) -> dict[str, float]:
    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in m.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits}


def test_a_relu_input_is_quantized_over_the_relus_range_on_the_override_path(tmp_path,
                                                                              monkeypatch):
    """The pinned ONNX Runtime (1.23, no calibration cache) takes the ranges as overrides, which
    replace the ranges it adjusts: the Conv output feeding the Relu was quantized over its own
    range, negative side included (scale 0.147), instead of the Relu's (0.123)."""
    import export.quantize as q

    model = _conv_relu_model(tmp_path / "m.onnx")
    x = [np.random.default_rng(1).standard_normal((2, 2, 32, 32)).astype(np.float32)]
    monkeypatch.setattr(q, "_has_calibration_cache", lambda: False)
    out = q.quantize_qdq(model, tmp_path / "over.onnx", x, "minmax")
    s = _activation_scales(out)
    # the float model's own extremes of the Conv output and the Relu output
    ref = onnx.load(str(model))
    ref.graph.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                             for n in ("a", "b")])
    fa, fb = ort.InferenceSession(ref.SerializeToString()).run(["a", "b"], {"frames": x[0]})
    own = max(-float(fa.min()), float(fa.max())) / 127
    relu = float(fb.max()) / 127
    assert own > 1.1 * relu  # the model is one where it matters
    assert s["a"] == pytest.approx(relu, rel=1e-6) and s["b"] == s["a"]
    monkeypatch.undo()
    if q._has_calibration_cache():  # and the cache path, adjusted by ONNX Runtime, agrees
        cached = q.quantize_qdq(model, tmp_path / "cache.onnx", x, "minmax")
        assert _activation_scales(cached) == s


def test_range_adjustment_follows_onnx_runtime():
    """Node order, a Relu's input read elsewhere too, an excluded node, a Clip after a Relu, a
    Softmax."""
    from export.quantize import adjust_ranges

    nodes = [helper.make_node("Relu", ["a"], ["b"], name="r1"),
             helper.make_node("Clip", ["b"], ["c"], name="c1"),
             helper.make_node("Relu", ["d"], ["e"], name="r2"),
             helper.make_node("Add", ["d", "e"], ["f"], name="add"),
             helper.make_node("Relu", ["f"], ["g"], name="tail"),
             helper.make_node("Softmax", ["g"], ["h"], name="sm")]
    m = helper.make_model(helper.make_graph(nodes, "g", [], []))
    ranges = {"a": (-5.0, 4.0), "b": (0.0, 4.0), "c": (0.0, 3.0), "d": (-2.0, 2.0),
              "e": (0.0, 2.0), "f": (-1.0, 3.0), "g": (0.0, 3.0), "h": (0.1, 0.9)}
    got = adjust_ranges(m, ranges, exclude=["tail"])
    assert got["a"] == (0.0, 4.0)  # from b as measured, before the Clip adjusts b (ORT's order)
    assert got["b"] == (0.0, 3.0)
    assert got["d"] == (-2.0, 2.0)  # the Add reads it too: not the Relu's alone
    assert got["f"] == (-1.0, 3.0)  # its Relu stays float
    assert got["h"] == (0.0, 1.0)
    assert ranges["a"] == (-5.0, 4.0)  # the caller's dict is left as it was
