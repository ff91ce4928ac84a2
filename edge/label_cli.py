"""``glass-inspect label``: labels for recorded samples without a drawing program.

For each sample the network's kept defects (``verdict.json`` of a sample kept for review) are
proposed one by one, and the operator answers at the prompt: ``y`` (a scratch, as proposed),
``n`` (not a scratch), ``e`` (a scratch, but its polyline or width as typed). Then missed
scratches can be typed in, and a sample left without any is confirmed clean or not. Scripts
say it on the command line instead: ``--yes`` (the network's defects as they are), ``--clean``
(no scratch), ``--from-truth`` (the simulator's ``truth.json``: the simulator stands in for the
operator). The file's format: :mod:`edge.labels_sample`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.cli_common import UsageError

POINTS_HINT = "points as x,y in mm separated by spaces, e.g. '12.3,4.1 18,6.2'"


def sample_folders(path: str | Path) -> list[Path]:
    """The sample folder itself, or the sample folders directly inside ``path`` (a recorded
    sample's manifest, or a kept verdict, marks one)."""
    from edge.recording import MANIFEST
    from edge.review import VERDICT

    p = Path(path)

    def is_sample(q: Path) -> bool:
        return (q / MANIFEST).is_file() or (q / VERDICT).is_file()

    if is_sample(p):
        return [p]
    found = sorted(q for q in p.iterdir() if q.is_dir() and is_sample(q)) if p.is_dir() else []
    if not found:
        raise UsageError(f"{p}: no recorded or kept sample here (no manifest.json or "
                         "verdict.json in it or in the folders directly below it)")
    return found


def _ask(prompt: str) -> str:
    try:
        return input(prompt).strip()
    except EOFError:
        raise UsageError("no answer on standard input; in a script use --yes, --clean or "
                         "--from-truth") from None


def parse_points(text: str) -> tuple[tuple[float, float], ...]:
    """'x,y x,y ...' in mm; ValueError says what was wrong."""
    pts = []
    for part in text.replace(";", " ").split():
        try:
            x, y = (float(v) for v in part.split(","))
        except ValueError:
            raise ValueError(f"{part!r} is not x,y ({POINTS_HINT})") from None
        pts.append((x, y))
    if len(pts) < 2:
        raise ValueError(f"a scratch needs at least two points ({POINTS_HINT})")
    return tuple(pts)


def _show(pts) -> str:
    return " ".join(f"{x:.3f},{y:.3f}" for x, y in pts)


def _edit(s):
    from edge.labels_sample import Scratch

    while True:
        text = _ask(f"    points (Enter keeps {_show(s.points_mm)}): ")
        try:
            pts = parse_points(text) if text else s.points_mm
            break
        except ValueError as exc:
            print(f"    {exc}")
    while True:
        text = _ask(f"    width in um (Enter keeps {s.width_um:g}): ")
        try:
            width = float(text) if text else s.width_um
            if not width > 0:
                raise ValueError
            break
        except ValueError:
            print(f"    expected a positive number of micrometres, got {text!r}")
    return Scratch(pts, width, "operator", s.note)


def _typed(width_um: float):
    """Scratches the operator types in (the ones the network missed)."""
    from edge.labels_sample import Scratch

    out = []
    while True:
        text = _ask(f"  a scratch the network missed? its {POINTS_HINT} (Enter: none): ")
        if not text:
            return out
        try:
            out.append(Scratch(parse_points(text), width_um, "operator"))
        except ValueError as exc:
            print(f"  {exc}")


def interactive(sample_dir: Path, proposals: list, record: dict, width_um: float):
    """Confirm, reject or edit each proposal, add missed ones, and say clean or not; the
    scratches and whether the sample is clean."""
    status = record.get("status", "not inspected")
    why = (record.get("review") or {}).get("why")
    print(f"{sample_dir.name}: {status}" + (f" - {record.get('reason')}" if record else "")
          + (f" (kept: {why})" if why else ""))
    kept = []
    for k, s in enumerate(proposals, 1):
        print(f"  scratch {k} of {len(proposals)}: {_show(s.points_mm)} mm, "
              f"{s.length_mm:.2f} mm, width {s.width_um:g} um ({s.note})")
        while True:
            answer = _ask("  a scratch? [y]es / [n]o / [e]dit: ").lower()
            if answer in ("y", "yes", "n", "no", "e", "edit"):
                break
            print("  answer y, n or e")
        if answer.startswith("y"):
            kept.append(s)
        elif answer.startswith("e"):
            kept.append(_edit(s))
    kept += _typed(width_um)
    if kept:
        return kept, False
    while True:
        answer = _ask("  no scratch labelled: is the sample clean? [y/n]: ").lower()
        if answer in ("y", "yes"):
            return [], True
        if answer in ("n", "no"):
            kept = _typed(width_um)
            if kept:
                return kept, False
            print("  a sample that is not clean needs its scratch: type its points")


def label_one(sample_dir: Path, mode: str, force: bool, by: str | None) -> str:
    """Label one sample; the line that says what was written."""
    from edge.labels_sample import (
        LABELS,
        SampleLabels,
        from_truth,
        from_verdict,
        now_utc,
        pixel_um,
        sample_area_mm,
        write_labels,
    )
    from edge.recording import open_sample

    if (sample_dir / LABELS).exists() and not force:
        raise UsageError(f"{sample_dir / LABELS} already exists; --force overwrites it")
    area = sample_area_mm(sample_dir)
    if area is None:
        raise UsageError(f"{sample_dir}: no frames were recorded (an ERROR before the first "
                         "RoI): nothing to label")
    if mode == "truth":
        truth = open_sample(sample_dir).truth()
        if truth is None:
            raise UsageError(f"{sample_dir}: no truth.json (--from-truth needs a sample the "
                             "simulated head recorded)")
        labels = from_truth(truth, by or "simulator truth")
    else:
        proposals, record = from_verdict(sample_dir)
        if mode == "yes":
            scratches, clean = proposals, not proposals
        elif mode == "clean":
            scratches, clean = [], True
        else:
            scratches, clean = interactive(sample_dir, proposals, record, pixel_um(sample_dir))
        who = by or {"yes": "the network, accepted with --yes", "clean": "--clean"}.get(
            mode, "operator")
        labels = SampleLabels(area[0], clean, tuple(scratches), (), who, now_utc())
    path = write_labels(sample_dir, labels, overwrite=force)
    n = len(labels.scratches)
    return (f"{path}: " + ("clean" if labels.clean else f"{n} scratch{'es' if n != 1 else ''}")
            + (f", {len(labels.contaminants)} contaminant(s)" if labels.contaminants else ""))


def cmd_label(args: argparse.Namespace) -> int:
    mode = "truth" if args.from_truth else "yes" if args.yes else "clean" if args.clean else "ask"
    for d in sample_folders(args.sample_dir):
        print(label_one(d, mode, args.force, args.by))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "label", help="label recorded samples: confirm, reject or edit the network's defects",
        description="Write labels.json beside a recorded sample (or each sample in a folder): "
                    "the scratches as polylines in sample mm with a width, or clean. The "
                    "network's kept defects (verdict.json of a sample kept for review) are "
                    "proposed one by one: y keeps one, n rejects it, e edits its points and "
                    "width; then missed scratches can be typed in, and a sample left without "
                    "any is confirmed clean or not. Format: docs/recorded_samples.md, Labels.")
    p.add_argument("sample_dir", metavar="SAMPLE_DIR",
                   help="a recorded or kept sample folder, or a folder of them")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--yes", action="store_true",
                     help="no prompt: the network's defects as they are (clean when none)")
    how.add_argument("--clean", action="store_true", help="no prompt: the sample is clean")
    how.add_argument("--from-truth", action="store_true",
                     help="no prompt: the simulator's truth.json (scratches and contaminants)")
    p.add_argument("--force", action="store_true", help="overwrite an existing labels.json")
    p.add_argument("--by", metavar="NAME", help="who labelled (default: operator, or "
                                                "'simulator truth' with --from-truth)")
    p.set_defaults(func=cmd_label)
