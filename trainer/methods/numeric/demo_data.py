"""The NumeriKontrol demo's training data beyond the numeric run's own trajectories: the Kontinuous baseline's
0-1 strength trajectories on the same frame pairs, and the base editor's edits."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ...data import cat
from ...data.trajectories import Frame, Trajectory, write_manifest
from ...engine.demo import TRAIN_FRAMES

def kontinuous_pairs(root: Path, frames_dir: Path, trajectories: list[Trajectory], tasks: dict[str, cat.CatTask]) -> Path:
    """The numeric run's frame pairs as 0-1 strength trajectories under ``root``: every frame k of every trajectory
    is the source of an "up" trajectory (frames k, k+1, ..., last; the task's increasing instruction) and a "down"
    one (frames k, k-1, ..., 0; the decreasing instruction); strength = |value - value_k| / the trajectory's own
    extent |value_last - value_0|: 0-1 normalised per sequence, as the paper's baseline is. The frames are the
    numeric run's files (paths relative to ``root``)."""
    rel = Path(os.path.relpath(frames_dir, root))
    out = []
    for t in trajectories:
        task = tasks[t.task]
        span = abs(t.frames[-1].value - t.frames[0].value)
        for k, source in enumerate(t.frames):
            for direction, frames in (("up", t.frames[k:]), ("down", t.frames[k::-1])):
                if len(frames) < 2:
                    continue
                out.append(Trajectory(
                    f"{t.id}/{k}-{direction}", str(rel / source.path),
                    task.instructions[0] if direction == "up" else task.instructions[1],
                    tuple(Frame(str(rel / f.path), abs(f.value - source.value) / span, f.value) for f in frames),
                    task.name, task.unit))
    write_manifest(root, out, tool="kontext-sliders demo --method numeric (Kontinuous baseline)")
    return root


BASE_STEP = 2  # the base editor's one amount: two frames (half the range at 5 frames), up or down


def _base_lines(task: cat.CatTask, delta: float) -> dict[str, str]:
    """The base editor's line for an edit by ``delta`` in each text form the fine-tunes read: the Kontinuous
    instruction, and the numeric line with its number as the offline encoder reads it."""
    from ....core.numeric import DEFAULT_REGISTRY
    from ....core.numeric.parser import NUMBER_RE
    up = (delta >= 0) == (task.range[1] >= task.range[0])
    return {"kontinuous": task.instructions[0 if up else 1],
            "numeric": NUMBER_RE.sub("#", DEFAULT_REGISTRY.task(task.name).render(delta))}


def base_edits(root: Path, frames_dir: Path, trajectories: list[Trajectory], tasks: list[cat.CatTask],
               photos: list[cat.Photo], seed: int, composed: int = 1) -> Path:
    """The base editor's samples under ``root`` (``edits.json``): per trajectory (its images are the numeric
    run's frame files), every frame edited ``BASE_STEP`` frames up ("increase ...") and down ("decrease ..."),
    in both text forms (``_base_lines``), and every frame unchanged under the empty prompt; per photo, one
    two-line edit of the first two tasks (each from a random frame-grid value, ``BASE_STEP`` frames up or down,
    composed A then B as the evaluation's truth; images under ``root/composed``), in both forms and both line
    orders: an editor that, like FLUX.1 Kontext, knows prompts of several instructions, while the sliders
    trained on it see single edits only. ``composed`` > 1: that many two-line edits per photo, each its own draw."""
    from ...data.edits import EditSample, write_edits
    by_name = {t.name: t for t in tasks}
    rel = Path(os.path.relpath(frames_dir, root))
    samples = []
    for t in trajectories:
        task = by_name[t.task]
        for k, source in enumerate(t.frames):
            image = str(rel / source.path)
            samples.append(EditSample(f"{t.id}/{k}/none", image, (), image))
            for j in (k + BASE_STEP, k - BASE_STEP):
                if 0 <= j < len(t.frames):
                    for form, line in _base_lines(task, t.frames[j].value - source.value).items():
                        samples.append(EditSample(f"{t.id}/{k}-{j}/{form}", image, (line,),
                                                  str(rel / t.frames[j].path)))
    a, b = tasks[:2]
    last = TRAIN_FRAMES - 1
    for photo in photos:
        noise_seed = cat.trajectory_seed(seed, f"composed/{photo.name}/noise")  # one per photo: draws share cells
        for draw in range(composed):
            tag = f"composed/{photo.name}" if draw == 0 else f"composed/{photo.name}/draw{draw}"
            g = torch.Generator().manual_seed(cat.trajectory_seed(seed, tag))
            ka, kb = (int(v) for v in torch.randint(TRAIN_FRAMES, (2,), generator=g))
            ja = ka + BASE_STEP if ka + BASE_STEP <= last else ka - BASE_STEP
            jb = kb + BASE_STEP if kb + BASE_STEP <= last else kb - BASE_STEP
            paths = []
            for i, j in ((ka, kb), (ja, jb)):
                path = f"composed/{photo.name}/{i}-{j}.png"  # one image per grid cell: draws may share it
                image = b.apply(a.apply(photo.image.unsqueeze(0), a.value_at(i / last), noise_seed),
                                b.value_at(j / last), noise_seed)[0]
                cat.save_png(image, root / path)
                paths.append(path)
            la = _base_lines(a, a.value_at(ja / last) - a.value_at(ka / last))
            lb = _base_lines(b, b.value_at(jb / last) - b.value_at(kb / last))
            for form in la:
                for order, lines in (("ab", (la[form], lb[form])), ("ba", (lb[form], la[form]))):
                    samples.append(EditSample(f"{tag}/{form}-{order}", paths[0], lines, paths[1]))
    root.mkdir(parents=True, exist_ok=True)
    return write_edits(root, samples, tool="kontext-sliders demo --method numeric (base editor)")


def two_line_replay(root: Path, base_root: Path) -> Path:
    """The base editor's two-line edits in the numeric run's text form (its lines as the base read them), as an
    edits folder under ``root`` for the numeric fine-tune's replay (``numeric.replay_edits``): what the base knew of
    prompts of several instructions, trained on again without numeric tokens while the slider learns single edits."""
    from ...data.edits import EditSample, read_edits, write_edits
    rel = Path(os.path.relpath(base_root, root))
    samples = [EditSample(s.id, str(rel / s.image), s.instructions, str(rel / s.target))
               for s in read_edits(base_root)
               if len(s.instructions) >= 2 and s.target is not None and "/numeric-" in s.id]
    root.mkdir(parents=True, exist_ok=True)
    return write_edits(root, samples, tool="kontext-sliders demo --method numeric (base editor's two-line edits)")


def trajectory_extents(trajectories: list[Trajectory], tasks: list[cat.CatTask]) -> list[float]:
    """Each trajectory's span as a fraction of its task's range."""
    ranges = {t.name: abs(t.range[1] - t.range[0]) for t in tasks}
    return [abs(t.frames[-1].value - t.frames[0].value) / ranges[t.task] for t in trajectories]


# ---------------------------------------------------------------- the two models as editors
