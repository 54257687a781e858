"""Showing and saving a rendered sweep: KontextSweepPreview (scrubbable in the browser) and KontextSaveSweep.

Both take the decoded sweep (IMAGE batch, one frame per sweep value, in sweep order) and the Sweep the
sampler used. The browser side of the preview is web/kontext_sweep_preview.js.
"""
from __future__ import annotations

import os
import random
import string

from comfy_api.latest import io, ui

from ...core.sweep import Sweep, frame_order
from . import media
from .nodes import CATEGORY, SweepType

FORMATS = ("webp", "gif", "mp4")


def check_frames(node: str, images, sweep: Sweep) -> None:
    if images.shape[0] != len(sweep.values):
        raise ValueError(f"{node}: images has {images.shape[0]} frame(s) but the sweep has {len(sweep.values)} "
                         f"value(s) ({', '.join(sweep.labels())}); connect the images decoded from the Kontext "
                         f"Sweep Sampler's LATENT together with that sampler's sweep output")


def sweep_info(sweep: Sweep) -> dict:
    return {"values": list(sweep.values), "labels": sweep.labels(), "knob": sweep.knob, "spacing": sweep.spacing}


class KontextSweepPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KontextSweepPreview",
            display_name="Kontext Sweep Preview",
            category=CATEGORY,
            description="Shows a rendered sweep one frame at a time with a slider labelled in knob values: drag "
                        "to scrub, arrow keys to step, play / ping-pong. Scrubbing runs nothing.",
            inputs=[
                io.Image.Input("images", tooltip="the decoded sweep: one frame per sweep value, in sweep order"),
                SweepType.Input("sweep", tooltip="the sweep output of Kontext Sweep Sampler (the values rendered)"),
                io.Image.Input("source", optional=True, tooltip="the unedited input image, shown side by side"),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, sweep, source=None) -> io.NodeOutput:
        check_frames("Kontext Sweep Preview", images, sweep)
        prefix = "kontext_sweep_" + "".join(random.choices(string.ascii_lowercase, k=6))
        frames = ui.ImageSaveHelper.save_images(images, prefix, io.FolderType.temp, None, compress_level=1)
        info = sweep_info(sweep) | {"frames": frames, "source": None}
        if source is not None:
            info["source"] = ui.ImageSaveHelper.save_images(source[:1], prefix + "_source", io.FolderType.temp,
                                                           None, compress_level=1)[0]
        # not under "images": the front-end would draw all frames as a grid next to the scrubber
        return io.NodeOutput(ui={"kontext_sweep": [info]})


class KontextSaveSweep(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="KontextSaveSweep",
            display_name="Kontext Save Sweep",
            category=CATEGORY,
            description="Saves a rendered sweep to the output folder as animated WEBP / GIF / MP4 and a contact "
                        "sheet PNG with each frame's knob value underneath. PNG and WEBP carry the workflow.",
            inputs=[
                io.Image.Input("images", tooltip="the decoded sweep: one frame per sweep value, in sweep order"),
                SweepType.Input("sweep", tooltip="the sweep output of Kontext Sweep Sampler (labels the frames)"),
                io.String.Input("filename_prefix", default="kontext_sweep",
                                tooltip="as in Save Image: may hold a subfolder and %date% style fields"),
                io.Boolean.Input("webp", default=True, tooltip="animated WEBP (carries the workflow)"),
                io.Boolean.Input("gif", default=False, tooltip="animated GIF (256 colours per frame)"),
                io.Boolean.Input("mp4", default=False, tooltip="H.264 MP4 (carries the workflow)"),
                io.Boolean.Input("contact_sheet", default=True,
                                 tooltip="one PNG with every frame and its value (carries the workflow)"),
                io.Boolean.Input("ping_pong", default=False,
                                 tooltip="animations play forward then back (2N-2 frames) for a seamless loop"),
                io.Int.Input("frame_duration_ms", default=400, min=20, max=10000, step=10,
                             tooltip="how long each frame shows (GIF keeps 10 ms steps)"),
                io.Int.Input("loop", default=0, min=0, max=1000,
                             tooltip="WEBP / GIF loop count; 0 = forever (MP4 has none)"),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, sweep, filename_prefix, webp, gif, mp4, contact_sheet, ping_pong, frame_duration_ms,
                loop) -> io.NodeOutput:
        check_frames("Kontext Save Sweep", images, sweep)
        if not (webp or gif or mp4 or contact_sheet):
            raise ValueError("Kontext Save Sweep: every format is switched off; turn on webp, gif, mp4 or "
                             "contact_sheet")
        import folder_paths
        from comfy.cli_args import args

        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), images.shape[2], images.shape[1])
        metadata = {} if args.disable_metadata else (
            ({"prompt": cls.hidden.prompt} if cls.hidden.prompt is not None else {}) | (cls.hidden.extra_pnginfo or {}))
        frames = [media.to_pil(image) for image in images]
        played = [frames[k] for k in frame_order(len(frames), ping_pong)]

        def target(suffix: str) -> tuple[str, ui.SavedResult]:
            file = f"{name}_{counter:05}_{suffix}"  # one counter for the set: the files belong together
            return os.path.join(folder, file), ui.SavedResult(file, subfolder, io.FolderType.output)

        shown, videos = [], []
        if webp:
            path, result = target(".webp")
            media.write_webp(path, played, frame_duration_ms, loop, metadata)
            shown.append(result)
        if gif:
            path, result = target(".gif")
            media.write_gif(path, played, frame_duration_ms, loop)
            shown.append(result)
        if contact_sheet:
            path, result = target("sheet.png")
            title = sweep.knob or ""
            media.contact_sheet(frames, sweep.labels(), title).save(path, pnginfo=media.png_info(metadata),
                                                                   compress_level=4)
            shown.append(result)
        if mp4:
            path, result = target(".mp4")
            media.write_mp4(path, played, frame_duration_ms, metadata)
            videos.append(result)
        output = {"images": shown, "animated": (webp or gif,)} if shown else {}
        if videos:  # not under "images": the node's preview would try to draw it as a picture
            output["video"] = videos
        return io.NodeOutput(ui=output)
