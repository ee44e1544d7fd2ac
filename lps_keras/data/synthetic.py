"""Built-in synthetic street scenes, written in the Cityscapes layout so the real reader is exercised.

Each image is drawn procedurally from a seeded generator: sky, buildings with windows, trees,
a perspective road with lane marks, sidewalks, terrain, cars, people, poles with signs and
traffic lights, sometimes an ego-vehicle bonnet (ignored). Colours, textures, lighting and noise
vary per image and per object so that colour alone does not give the class. Labels are written
as official ``*_gtFine_labelIds.png`` (Cityscapes labelIds), i.e. the pipeline reads them
exactly like real Cityscapes.

Generation is atomic and idempotent: the set is drawn into a temporary sibling directory and
renamed into place with a ``synthetic.json`` stamp; a complete set with the same settings is
re-used, a directory with different settings is an error (never silently overwritten).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lps_keras.data import cityscapes
from lps_keras.data.common import DataError, DatasetInfo
from lps_keras.fileio import publish_tree

INFO = DatasetInfo("synthetic", cityscapes.CLASS_NAMES, cityscapes.COLORS, splits=("train", "val"))
STAMP = "synthetic.json"
GENERATOR_VERSION = 1

# Train ids used by the drawing code.
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEG, TERRAIN, SKY, PERSON, RIDER, CAR = range(14)
_EGO = 255  # drawn as labelId 1 ("ego vehicle"), which maps back to the ignore index


def _base_colors() -> np.ndarray:
    """Mean RGB per train id, loosely photographic (not the palette) so the image is not the label."""
    c = np.zeros((19, 3), np.float32)
    c[ROAD] = (90, 88, 92)
    c[SIDEWALK] = (150, 140, 135)
    c[BUILDING] = (120, 100, 90)
    c[WALL] = (140, 130, 120)
    c[FENCE] = (110, 110, 100)
    c[POLE] = (95, 95, 100)
    c[LIGHT] = (40, 40, 40)
    c[SIGN] = (200, 180, 40)
    c[VEG] = (60, 110, 50)
    c[TERRAIN] = (120, 150, 80)
    c[SKY] = (150, 185, 225)
    c[PERSON] = (110, 60, 70)
    c[CAR] = (70, 80, 140)
    return c


_BASE = _base_colors()


class _Canvas:
    """Label map plus per-pixel colour, painted object by object (later objects occlude earlier ones)."""

    def __init__(self, h, w, rng):
        self.h, self.w, self.rng = h, w, rng
        self.label = np.full((h, w), SKY, np.uint8)
        self.rgb = np.zeros((h, w, 3), np.float32)
        self.yy, self.xx = np.mgrid[0:h, 0:w].astype(np.float32)

    def paint(self, mask, cls, color=None, jitter=25.0):
        if color is None:
            color = _BASE[cls] + self.rng.normal(0, jitter, 3)
        self.label[mask] = cls
        self.rgb[mask] = color

    def rect(self, y0, y1, x0, x1):
        m = np.zeros((self.h, self.w), bool)
        y0, y1 = int(max(0, round(y0))), int(min(self.h, round(y1)))
        x0, x1 = int(max(0, round(x0))), int(min(self.w, round(x1)))
        if y1 > y0 and x1 > x0:
            m[y0:y1, x0:x1] = True
        return m

    def ellipse(self, cy, cx, ry, rx):
        return ((self.yy - cy) / max(ry, 0.5)) ** 2 + ((self.xx - cx) / max(rx, 0.5)) ** 2 <= 1.0


def _smooth_noise(rng, h, w, cell):
    """Low-frequency texture: coarse random grid upsampled bilinearly."""
    gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
    g = rng.normal(0, 1, (gh, gw)).astype(np.float32)
    ys = np.linspace(0, gh - 1.001, h)
    xs = np.linspace(0, gw - 1.001, w)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    a = g[y0][:, x0]
    b = g[y0][:, x0 + 1]
    c = g[y0 + 1][:, x0]
    d = g[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def draw_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One street scene: (uint8 RGB [H, W, 3], uint8 train ids [H, W] with 255 for the ego bonnet)."""
    h, w = height, width
    cv = _Canvas(h, w, rng)
    yy, xx = cv.yy, cv.xx
    horizon = h * rng.uniform(0.36, 0.5)
    vx = w * rng.uniform(0.35, 0.65)

    # Sky: vertical gradient.
    sky_top = _BASE[SKY] + rng.normal(0, 20, 3) - 40
    sky_bot = _BASE[SKY] + rng.normal(0, 20, 3) + 20
    t = np.clip(yy / max(horizon, 1), 0, 1)[..., None]
    cv.rgb[:] = sky_top * (1 - t) + sky_bot * t

    # Buildings (with windows) and trees along the skyline.
    x = -rng.uniform(0, 30)
    while x < w:
        bw = rng.uniform(0.08, 0.25) * w
        if rng.uniform() < 0.75:
            top = horizon - rng.uniform(0.15, 0.9) * horizon
            m = cv.rect(top, horizon + 0.08 * h, x, x + bw)
            wall_col = _BASE[BUILDING] + rng.normal(0, 30, 3)
            cv.paint(m, BUILDING, wall_col)
            win_col = wall_col * rng.uniform(0.3, 0.6) + rng.uniform(0, 40)
            step_y, step_x = rng.uniform(8, 16), rng.uniform(8, 16)
            wy = (yy - top) % step_y < step_y * 0.5
            wx = (xx - x) % step_x < step_x * 0.5
            cv.rgb[m & wy & wx] = win_col
        else:
            cx, r = x + bw / 2, rng.uniform(0.5, 0.9) * bw
            cy = horizon - r * rng.uniform(0.3, 1.0)
            cv.paint(cv.ellipse(cy, cx, r, r * rng.uniform(0.7, 1.1)) | cv.rect(cy, horizon + 0.05 * h, cx - 2, cx + 2),
                     VEG)
        x += bw

    # Ground: road as a perspective trapezoid, sidewalks beside it, terrain outside.
    below = yy >= horizon
    depth = np.clip((yy - horizon) / (h - horizon), 0, 1)
    half_road = depth * w * rng.uniform(0.45, 0.8)
    side = depth * w * rng.uniform(0.15, 0.35)
    dx = xx - vx
    road = below & (np.abs(dx) <= half_road)
    walk = below & ~road & (np.abs(dx) <= half_road + side)
    terrain = below & ~road & ~walk
    cv.paint(terrain, TERRAIN if rng.uniform() < 0.6 else VEG)
    cv.paint(walk, SIDEWALK)
    # Kerb slabs: a darker joint pattern on the sidewalk.
    cv.rgb[walk & ((yy * 0.5 + np.abs(dx) * 0.1) % 6 < 0.8)] *= 0.8
    cv.paint(road, ROAD, jitter=15)
    # Lane marks (road class): dashed lines from the vanishing point.
    for frac in rng.choice([-0.5, 0.0, 0.5], size=rng.integers(1, 4), replace=False):
        line = road & (np.abs(dx - frac * half_road) <= 0.6 + depth * 3) & ((depth * 40) % 2 < 1.1)
        cv.rgb[line] = rng.uniform(200, 240)

    # Objects far to near so nearer ones occlude.
    objects = []
    for _ in range(rng.integers(1, 5)):
        objects.append(("car", rng.uniform(0.15, 1.0)))
    for _ in range(rng.integers(0, 4)):
        objects.append(("person", rng.uniform(0.1, 0.9)))
    for _ in range(rng.integers(1, 4)):
        objects.append(("pole", rng.uniform(0.1, 0.9)))
    objects.sort(key=lambda o: o[1])
    for kind, d in objects:
        yb = horizon + d * (h - horizon)
        road_half = d * (half_road.max() / max(depth.max(), 1e-6))
        side_w = d * (side.max() / max(depth.max(), 1e-6))
        if kind == "car":
            cw = road_half * rng.uniform(0.45, 0.7)
            cx = vx + rng.uniform(-1, 1) * (road_half - cw / 2)
            ch = cw * rng.uniform(0.55, 0.8)
            body = cv.rect(yb - ch * 0.6, yb - ch * 0.12, cx - cw / 2, cx + cw / 2)
            cabin = cv.rect(yb - ch, yb - ch * 0.55, cx - cw * 0.35, cx + cw * 0.35)
            wheels = cv.ellipse(yb - ch * 0.12, cx - cw * 0.3, ch * 0.13, cw * 0.1) | cv.ellipse(
                yb - ch * 0.12, cx + cw * 0.3, ch * 0.13, cw * 0.1)
            col = np.array([rng.uniform(20, 230) for _ in range(3)], np.float32)
            cv.paint(body | cabin, CAR, col)
            cv.rgb[cabin & (yy > yb - ch * 0.92)] = col * 0.35 + 30  # windows
            cv.paint(wheels, CAR, np.array([25, 25, 25], np.float32) + rng.uniform(0, 15))
        elif kind == "person":
            ph = road_half * rng.uniform(0.5, 0.8)
            px = vx + rng.choice([-1, 1]) * (road_half + side_w * rng.uniform(0.2, 0.8))
            body = cv.rect(yb - ph * 0.82, yb, px - ph * 0.12, px + ph * 0.12)
            head = cv.ellipse(yb - ph * 0.9, px, ph * 0.09, ph * 0.08)
            cv.paint(body, PERSON, np.array([rng.uniform(20, 200) for _ in range(3)], np.float32))
            cv.paint(head, PERSON, np.array([200, 160, 130], np.float32) * rng.uniform(0.5, 1.1))
        else:
            plh = road_half * rng.uniform(1.2, 2.0)
            px = vx + rng.choice([-1, 1]) * (road_half + side_w * rng.uniform(0.3, 0.9))
            pw = max(1.0, plh * 0.03)
            cv.paint(cv.rect(yb - plh, yb, px - pw, px + pw), POLE)
            s = plh * 0.13
            if rng.uniform() < 0.6:
                shape = cv.ellipse(yb - plh, px, s, s) if rng.uniform() < 0.5 else cv.rect(
                    yb - plh - s, yb - plh + s, px - s, px + s)
                cv.paint(shape, SIGN, np.array([rng.uniform(150, 240), rng.uniform(20, 220), rng.uniform(20, 200)]))
            else:
                box = cv.rect(yb - plh - 1.6 * s, yb - plh + 1.6 * s, px - 0.6 * s, px + 0.6 * s)
                cv.paint(box, LIGHT)
                lamp = cv.ellipse(yb - plh + rng.choice([-1, 0, 1]) * s, px, 0.4 * s, 0.4 * s)
                cv.rgb[lamp & box] = rng.choice([[230, 40, 30], [240, 200, 30], [40, 220, 80]])

    if rng.uniform() < 0.2:  # ego-vehicle bonnet: ignored in training and evaluation
        bonnet = cv.ellipse(h * 1.08, w / 2, h * 0.15, w * 0.7)
        cv.paint(bonnet, _EGO, np.array([30, 30, 35], np.float32))

    # Lighting, shading texture and sensor noise.
    gain = rng.uniform(0.6, 1.3)
    shade = 1.0 + 0.15 * _smooth_noise(rng, h, w, 24) + 0.06 * _smooth_noise(rng, h, w, 6)
    tint = rng.normal(1.0, 0.05, 3).astype(np.float32)
    img = cv.rgb * shade[..., None] * gain * tint + rng.normal(0, 6, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8), cv.label


def _settings(cfg) -> dict:
    return {"version": GENERATOR_VERSION, **{k: v for k, v in dataclasses.asdict(cfg).items()}}


def is_complete(root: str | Path, cfg) -> bool:
    stamp = Path(root) / STAMP
    if not stamp.is_file():
        return False
    try:
        return json.loads(stamp.read_text()) == _settings(cfg)
    except (OSError, json.JSONDecodeError):
        return False


def generate(root: str | Path, cfg, progress: bool = True) -> Path:
    """Make sure the synthetic set described by ``cfg`` (a ``SyntheticConfig``) exists at ``root``.

    Returns ``root``. Re-uses a complete set with the same settings; raises DataError if ``root``
    holds something else.
    """
    from PIL import Image

    root = Path(root)
    if is_complete(root, cfg):
        return root
    if root.exists() and any(root.iterdir()):
        raise DataError(
            f"synthetic: {str(root)!r} exists but is not a synthetic set with these settings "
            f"({_settings(cfg)}); delete it or choose another data.root"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    start = time.time()
    try:
        total = cfg.num_train + cfg.num_val
        done = 0
        for split_index, (split, n) in enumerate((("train", cfg.num_train), ("val", cfg.num_val))):
            for i in range(n):
                city = f"synth{split_index}{i % 3}"
                stem = f"{city}_{i // 3:06d}_{i:06d}"
                rng = np.random.default_rng([cfg.seed, split_index, i])
                image, train_ids = draw_scene(rng, cfg.height, cfg.width)
                label_ids = cityscapes.TRAIN_ID_TO_LABEL_ID[train_ids]
                label_ids[train_ids == _EGO] = 1  # "ego vehicle"
                img_dir = tmp / "leftImg8bit" / split / city
                lbl_dir = tmp / "gtFine" / split / city
                img_dir.mkdir(parents=True, exist_ok=True)
                lbl_dir.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(img_dir / f"{stem}_leftImg8bit.png", compress_level=1)
                Image.fromarray(label_ids).save(lbl_dir / f"{stem}_gtFine_labelIds.png", compress_level=1)
                done += 1
                if progress and (done % 100 == 0 or done == total):
                    print(f"synthetic: {done}/{total} images ({time.time() - start:.1f} s)", file=sys.stderr)
        (tmp / STAMP).write_text(json.dumps(_settings(cfg), indent=2))
        publish_tree(tmp)  # mkdtemp made it 0700
        if root.exists():
            root.rmdir()  # empty (checked above)
        try:
            os.rename(tmp, root)
        except OSError:
            if not is_complete(root, cfg):  # lost a race to another process: fine if it produced the same set
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root
