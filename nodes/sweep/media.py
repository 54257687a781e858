"""Writing a rendered sweep to files: animated WEBP / GIF, MP4 (PyAV) and a labelled contact sheet (PIL).

Only PIL, PyAV and numpy here (no ComfyUI imports): the save node decides names and metadata and
passes them in. Frames arrive as PIL images already in playback order.
"""
from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

EXIF_MODEL, EXIF_MAKE = 0x0110, 0x010F  # where ComfyUI's own WEBP savers put prompt / workflow


def to_pil(image) -> Image.Image:
    """One IMAGE item [H, W, C] (torch, 0..1) -> an RGB PIL image."""
    array = np.clip(255.0 * image.detach().cpu().float().numpy(), 0, 255).astype(np.uint8)
    if array.shape[-1] == 1:
        array = array.repeat(3, axis=-1)
    return Image.fromarray(array[..., :3])


# ---------------------------------------------------------------- metadata (as ComfyUI's SaveImage / SaveAnimatedWEBP)

def png_info(metadata: dict) -> PngInfo | None:
    if not metadata:
        return None
    info = PngInfo()
    for key, value in metadata.items():
        info.add_text(key, json.dumps(value))
    return info


def webp_exif(image: Image.Image, metadata: dict) -> Image.Exif:
    """prompt in EXIF Model, each other entry (the workflow) in Make and downwards: ComfyUI reads these back."""
    exif = image.getexif()
    tag = EXIF_MAKE
    for key, value in metadata.items():
        if key == "prompt":
            exif[EXIF_MODEL] = f"prompt:{json.dumps(value)}"
        else:
            exif[tag] = f"{key}:{json.dumps(value)}"
            tag -= 1
    return exif


# ---------------------------------------------------------------- animations

def write_webp(path: str, frames: list[Image.Image], duration_ms: int, loop: int, metadata: dict) -> None:
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration_ms, loop=loop,
                   exif=webp_exif(frames[0], metadata), quality=90, method=4)


def write_gif(path: str, frames: list[Image.Image], duration_ms: int, loop: int) -> None:
    # GIF stores durations in 10 ms units; the node's step is 10 ms so nothing is rounded away
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=duration_ms, loop=loop, disposal=1)


def write_mp4(path: str, frames: list[Image.Image], duration_ms: int, metadata: dict) -> None:
    """H.264 in yuv420p (plays everywhere); odd sizes are padded by one edge pixel (4:2:0 needs even)."""
    import av
    width, height = frames[0].size
    even_w, even_h = width + width % 2, height + height % 2
    with av.open(path, mode="w", options={"movflags": "use_metadata_tags"}) as container:
        for key, value in metadata.items():
            container.metadata[key] = json.dumps(value)
        stream = container.add_stream("h264", rate=Fraction(1000, duration_ms))
        stream.width, stream.height, stream.pix_fmt = even_w, even_h, "yuv420p"
        for frame in frames:
            array = np.asarray(frame)
            array = np.pad(array, ((0, even_h - height), (0, even_w - width), (0, 0)), mode="edge")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode(None))


# ---------------------------------------------------------------- contact sheet

def sheet_grid(count: int) -> tuple[int, int]:
    """(columns, rows) for ``count`` cells: about square, never an empty row."""
    columns = math.ceil(math.sqrt(count))
    return columns, math.ceil(count / columns)


def label_font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable when PIL has FreeType
    except (TypeError, OSError):
        return ImageFont.load_default()


def centred_text(draw: ImageDraw.ImageDraw, centre: tuple[float, float], text: str, font) -> None:
    # by the text's bounding box: anchors other than the default need a TrueType font
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text((centre[0] - (left + right) / 2, centre[1] - (top + bottom) / 2), text, fill="black", font=font)


def contact_sheet(frames: list[Image.Image], labels: list[str], title: str = "") -> Image.Image:
    """Frames left to right, top to bottom, each with its label centred in a strip underneath."""
    if len(frames) != len(labels):
        raise ValueError(f"contact sheet: {len(frames)} frames but {len(labels)} labels")
    width, height = frames[0].size
    strip = max(18, height // 8)
    font = label_font(int(strip * 0.7))
    columns, rows = sheet_grid(len(frames))
    header = strip if title else 0
    sheet = Image.new("RGB", (columns * width, header + rows * (height + strip)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        centred_text(draw, (columns * width / 2, header / 2), title, font)
    for k, (frame, label) in enumerate(zip(frames, labels)):
        x, y = (k % columns) * width, header + (k // columns) * (height + strip)
        sheet.paste(frame.resize((width, height)) if frame.size != (width, height) else frame, (x, y))
        centred_text(draw, (x + width / 2, y + height + strip / 2), label, font)
    return sheet
