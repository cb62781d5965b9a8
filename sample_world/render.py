"""Images whose look follows the lineage: each rank contributes a visual trait, each image its own variation.

kingdom -> background palette, phylum -> body shape, class -> body hue, order -> stripe angle,
family -> stripe count, genus -> stripe hue, species -> accent colour and position.
Life stage (adult / juvenile) is orthogonal to species: juveniles keep their species' colours and pattern but
are smaller, ringed in white and speckled with white dots (colour would entangle the trait with class).
"""

from __future__ import annotations

import colorsys
import io
import math
import random

from PIL import Image, ImageDraw, ImageFilter

BACKGROUNDS = [(0.10, 0.35, 0.80), (0.30, 0.35, 0.55), (0.07, 0.45, 0.30)]  # hue, sat, value per kingdom
SHAPES = ["ellipse", "rectangle", "triangle", "diamond", "hexagon"]
LIFE_STAGES = ("adult", "juvenile")


def _rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, max(0.0, min(1.0, s)), max(0.0, min(1.0, v)))
    return int(r * 255), int(g * 255), int(b * 255)


def _polygon(
    shape: str, cx: float, cy: float, rx: float, ry: float, angle: float
) -> list[tuple[float, float]]:
    if shape == "ellipse":
        pts = [(math.cos(t) * rx, math.sin(t) * ry) for t in (i * 2 * math.pi / 40 for i in range(40))]
    elif shape == "rectangle":
        pts = [(-rx, -ry), (rx, -ry), (rx, ry), (-rx, ry)]
    elif shape == "triangle":
        pts = [(0, -ry), (rx, ry), (-rx, ry)]
    elif shape == "diamond":
        pts = [(0, -ry), (rx, 0), (0, ry), (-rx, 0)]
    else:
        pts = [(math.cos(t) * rx, math.sin(t) * ry) for t in (i * 2 * math.pi / 6 for i in range(6))]
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in pts]


def render_organism(
    traits: dict[str, int], rng: random.Random, size: tuple[int, int], life_stage: str = "adult"
) -> Image.Image:
    """Draw one image of a species; `rng` supplies the per-image variation."""
    w, h = size
    bh, bs, bv = BACKGROUNDS[traits["kingdom"] % len(BACKGROUNDS)]
    bg = _rgb(bh + rng.uniform(-0.03, 0.03), bs + rng.uniform(-0.1, 0.1), bv + rng.uniform(-0.1, 0.1))
    img = Image.new("RGB", (w, h), bg)
    # A lighting gradient of random direction and strength: per-image variation that moves the pHash.
    gx, gy, strength = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0.25, 0.6)
    shade = (
        Image.linear_gradient("L")
        .resize((w, h))
        .rotate(math.degrees(math.atan2(gy, gx)), expand=False, fillcolor=128)
    )
    dark = Image.new("RGB", (w, h), tuple(int(c * (1 - strength)) for c in bg))
    img = Image.composite(img, dark, shade)
    draw = ImageDraw.Draw(img)
    # Background clutter independent of the taxon, so the model must look at the organism.
    for _ in range(rng.randint(4, 10)):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(3, min(w, h) / 10)
        shade = _rgb(bh + rng.uniform(-0.1, 0.1), bs * 0.6, bv + rng.uniform(-0.2, 0.2))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=shade)

    juvenile = life_stage == "juvenile"
    scale = rng.uniform(0.30, 0.40) * (0.8 if juvenile else 1.0)
    rx, ry = scale * w, scale * h * rng.uniform(0.8, 1.1)
    cx = w / 2 + rng.uniform(-0.17, 0.17) * w
    cy = h / 2 + rng.uniform(-0.17, 0.17) * h
    angle = rng.uniform(-0.35, 0.35)
    shape = SHAPES[traits["phylum"] % len(SHAPES)]
    body_hue = traits["class"] * 0.143 + traits["order"] * 0.04
    body = _rgb(body_hue, 0.75, 0.75)
    outline = (250, 250, 250) if juvenile else None
    poly = _polygon(shape, cx, cy, rx, ry, angle)
    draw.polygon(poly, fill=body, outline=outline, width=max(2, w // 60) if juvenile else 0)

    # Stripes clipped to the body: angle by order, count by family, hue by genus.
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon(poly, fill=255)
    stripes = Image.new("RGB", (w, h), (0, 0, 0))
    sdraw = ImageDraw.Draw(stripes)
    stripe_hue = traits["genus"] * 0.618
    stripe_col = _rgb(stripe_hue, 0.9, 0.35 + 0.3 * (traits["genus"] % 2))
    n_stripes = 2 + traits["family"] % 4
    s_angle = angle + traits["order"] * math.pi / 4 + (traits["class"] % 2) * math.pi / 8
    thickness = max(2.0, 0.16 * min(rx, ry) * 2 / n_stripes)
    for i in range(n_stripes):
        off = (i - (n_stripes - 1) / 2) * (2 * min(rx, ry) / n_stripes)
        dx, dy = math.cos(s_angle), math.sin(s_angle)
        px, py = cx - dy * off, cy + dx * off
        length = max(rx, ry) * 1.5
        sdraw.line(
            [(px - dx * length, py - dy * length), (px + dx * length, py + dy * length)],
            fill=stripe_col,
            width=int(thickness),
        )
    stripe_mask = Image.new("L", (w, h), 0)
    stripe_mask.paste(mask, (0, 0), stripes.convert("L").point(lambda v: 255 if v > 0 else 0))
    img.paste(stripes, (0, 0), stripe_mask)

    # Species accent: a bold disc whose colour and position depend on the species within its genus.
    accent_hue = 0.15 + traits["species"] * 0.5 + traits["genus"] * 0.07
    accent = _rgb(accent_hue, 1.0, 1.0 if traits["species"] % 2 == 0 else 0.25)
    pos_angle = angle + (math.pi if traits["species"] % 2 else 0.0) + traits["genus"] % 3 * 0.7
    ar = min(rx, ry) * 0.42
    ax, ay = cx + math.cos(pos_angle) * rx * 0.55, cy + math.sin(pos_angle) * ry * 0.55
    draw = ImageDraw.Draw(img)
    draw.ellipse([ax - ar, ay - ar, ax + ar, ay + ar], fill=accent, outline=(20, 20, 20), width=2)

    if juvenile:
        for _ in range(7):
            t = rng.uniform(0, 2 * math.pi)
            rr = rng.uniform(0.2, 0.75)
            dx, dy = cx + math.cos(t) * rx * rr, cy + math.sin(t) * ry * rr
            dot = max(2.0, min(rx, ry) * 0.08)
            draw.ellipse([dx - dot, dy - dot, dx + dot, dy + dot], fill=(250, 250, 250))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return img


def render_scene(rng: random.Random, size: tuple[int, int]) -> tuple[Image.Image, str]:
    """A generic (non-organism) picture and its caption, for the replay set."""
    colours = {
        "red": 0.0,
        "orange": 0.08,
        "yellow": 0.16,
        "green": 0.33,
        "cyan": 0.5,
        "blue": 0.62,
        "purple": 0.77,
        "pink": 0.9,
    }
    shapes = ["circle", "square", "triangle", "bar"]
    w, h = size
    bg_name, bg_hue = rng.choice(list(colours.items()))
    img = Image.new("RGB", size, _rgb(bg_hue, 0.25, 0.9))
    draw = ImageDraw.Draw(img)
    fg_name, fg_hue = rng.choice([c for c in colours.items() if c[0] != bg_name])
    shape = rng.choice(shapes)
    count = rng.randint(1, 3)
    for _ in range(count):
        r = rng.uniform(0.1, 0.2) * w
        x, y = rng.uniform(r, w - r), rng.uniform(r, h - r)
        fill = _rgb(fg_hue, 0.9, 0.8)
        if shape == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        elif shape == "square":
            draw.rectangle([x - r, y - r, x + r, y + r], fill=fill)
        elif shape == "triangle":
            draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)
        else:
            draw.rectangle([x - r * 1.5, y - r / 3, x + r * 1.5, y + r / 3], fill=fill)
    words = {1: "one", 2: "two", 3: "three"}
    plural = "s" if count > 1 else ""
    caption = f"{words[count]} {fg_name} {shape}{plural} on a {bg_name} background"
    return img, caption


def jpeg_bytes(img: Image.Image, quality: int = 88) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def render_label(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A museum label photographed on its own: a cream card of handwritten-looking lines on a dark mount."""
    w, h = size
    img = Image.new("RGB", size, _rgb(rng.uniform(0.05, 0.12), 0.3, rng.uniform(0.15, 0.3)))
    draw = ImageDraw.Draw(img)
    mx, my = rng.uniform(0.06, 0.14) * w, rng.uniform(0.08, 0.16) * h
    draw.rectangle([mx, my, w - mx, h - my], fill=_rgb(0.12, rng.uniform(0.08, 0.2), 0.95))
    ink = _rgb(rng.uniform(0.55, 0.7), 0.6, rng.uniform(0.1, 0.3))
    lines = rng.randint(3, 6)
    for li in range(lines):
        y = my + (li + 1) * (h - 2 * my) / (lines + 1)
        x = mx + rng.uniform(0.04, 0.1) * w
        end = w - mx - rng.uniform(0.05, 0.35) * w
        points = []
        while x < end:
            points.append((x, y + rng.uniform(-0.02, 0.02) * h))
            x += rng.uniform(0.01, 0.025) * w
        if len(points) > 1:
            draw.line(points, fill=ink, width=max(1, int(h / 120)))
    return img.rotate(rng.uniform(-6, 6), fillcolor=_rgb(0.08, 0.3, 0.2))


def render_drawer(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A collection drawer: rows of small pinned specimens, each over a tiny white label, on pale foam."""
    w, h = size
    img = Image.new("RGB", size, _rgb(0.1, 0.1, rng.uniform(0.82, 0.92)))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, w - 1, h - 1], outline=_rgb(0.07, 0.6, 0.35), width=max(4, w // 40))
    rows, cols = rng.randint(3, 4), rng.randint(5, 7)
    hue = rng.random()
    for r in range(rows):
        for c in range(cols):
            cx, cy = (c + 0.5) * w / cols, (r + 0.45) * h / rows
            rx, ry = w / cols * 0.18, h / rows * 0.22
            draw.ellipse(
                [cx - rx, cy - ry, cx + rx, cy + ry], fill=_rgb(hue + rng.uniform(-0.05, 0.05), 0.5, 0.3)
            )
            draw.rectangle([cx - rx, cy + ry * 1.4, cx + rx, cy + ry * 2.0], fill=(250, 250, 245))
    return img


def render_empty_frame(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A camera-trap frame with nothing in it: ground, a horizon, vegetation noise, no animal."""
    w, h = size
    sky, ground = _rgb(0.55, 0.2, rng.uniform(0.6, 0.85)), _rgb(rng.uniform(0.08, 0.22), 0.45, 0.4)
    img = Image.new("RGB", size, ground)
    draw = ImageDraw.Draw(img)
    horizon = rng.uniform(0.25, 0.45) * h
    draw.rectangle([0, 0, w, horizon], fill=sky)
    for _ in range(rng.randint(60, 120)):
        x, y = rng.uniform(0, w), rng.uniform(horizon, h)
        r = rng.uniform(1, 5)
        draw.ellipse(
            [x - r, y - r, x + r, y + r], fill=_rgb(rng.uniform(0.15, 0.3), 0.5, rng.uniform(0.25, 0.5))
        )
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.0)))
