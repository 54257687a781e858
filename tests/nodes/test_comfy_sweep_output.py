"""KontextSaveSweep and KontextSweepPreview through ComfyUI's loader, validation and executor.

The frames come from a test node (a batch of visibly different images) and the sweep from
KontextStrengthSweep; the files are decoded back (PIL for PNG / GIF / WEBP, PyAV for MP4) and each
frame is matched to the source frame it is closest to, so order, count and timing are checked.
"""
import asyncio
import json

import numpy as np
import pytest
from PIL import Image, ImageSequence

import ks_fixtures as F
from test_comfy_execution import _Server

pytestmark = pytest.mark.comfyui
TEST_NODES = F.PACK_DIR / "tests" / "comfy_test_nodes"
COUNT, WIDTH, HEIGHT = 5, 64, 48


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    F.import_comfyui()
    import folder_paths
    import nodes
    for module in (F.PACK_DIR, TEST_NODES):
        assert asyncio.run(nodes.load_custom_node(str(module))), f"ComfyUI could not load {module}"
    old = folder_paths.get_output_directory(), folder_paths.get_temp_directory()
    out, temp = tmp_path_factory.mktemp("output"), tmp_path_factory.mktemp("temp")
    folder_paths.set_output_directory(str(out))
    folder_paths.set_temp_directory(str(temp))
    yield out, temp
    folder_paths.set_output_directory(old[0])
    folder_paths.set_temp_directory(old[1])


def sweep_graph(node="KontextSaveSweep", count=COUNT, frames=COUNT, **inputs):
    graph = {
        "1": {"class_type": "KSTestSweepFrames", "inputs": {"count": frames, "width": WIDTH, "height": HEIGHT}},
        "2": {"class_type": "KontextStrengthSweep",
              "inputs": {"start": -0.5, "end": 1.5, "count": count, "spacing": "linear"}},
    }
    if node == "KontextSaveSweep":
        settings = {"filename_prefix": "sweeps/test", "webp": True, "gif": True, "mp4": True, "contact_sheet": True,
                    "ping_pong": False, "frame_duration_ms": 250, "loop": 0} | inputs
    else:
        settings = inputs
    graph["3"] = {"class_type": node, "inputs": {"images": ["1", 0], "sweep": ["2", 0], **settings}}
    return graph


def run_prompt(prompt):
    """(success, websocket messages, ui outputs by node id): validate and execute as the server does."""
    import execution
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("test", prompt, None))
    assert valid, (error, node_errors)
    server = _Server()
    executor = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
    executor.execute(prompt, "test", {"client_id": "test"}, outputs)  # no client: no execution_error message
    return executor.success, server.messages, executor.history_result.get("outputs", {})


def run_ok(graph):
    ok, messages, outputs = run_prompt(graph)
    assert ok, messages
    return outputs["3"]


def expected_frames():
    from comfy_test_nodes import sweep_frames  # the same pixels the test node produced
    return (sweep_frames(COUNT, WIDTH, HEIGHT).numpy() * 255).astype(np.float32)


def frame_indices(decoded):
    """For each decoded frame, the index of the source frame it is nearest to (and check it is near)."""
    truth = expected_frames()
    indices = []
    for frame in decoded:
        a = np.asarray(frame.convert("RGB"), dtype=np.float32)[:HEIGHT, :WIDTH]
        errors = [float(np.abs(a - t).mean()) for t in truth]
        best = int(np.argmin(errors))
        assert errors[best] < 12, f"a decoded frame matches no source frame (mean abs error {errors[best]:.1f})"
        indices.append(best)
    return indices


def files_of(output, out_dir):
    results = output.get("images", []) + output.get("video", [])
    return {r["filename"].rsplit(".", 1)[-1] if "sheet" not in r["filename"] else "sheet":
            out_dir / r["subfolder"] / r["filename"] for r in results}


def test_save_sweep_writes_every_format_with_frames_in_order_and_metadata(folders):
    out, _ = folders
    output = run_ok(sweep_graph())
    files = files_of(output, out)
    assert set(files) == {"webp", "gif", "mp4", "sheet"} and all(p.is_file() for p in files.values()), files
    assert all(r["type"] == "output" and r["subfolder"] == "sweeps" for r in output["images"] + output["video"])
    for kind in ("webp", "gif"):
        with Image.open(files[kind]) as im:
            frames = [f.copy() for f in ImageSequence.Iterator(im)]
            assert frame_indices(frames) == list(range(COUNT)), kind
            assert im.info.get("loop") == 0, kind  # 0 = forever
        for f in frames:
            assert f.info["duration"] == 250, kind
    import av  # ComfyUI's dependency: present where these tests run, not in the suite without ComfyUI
    with av.open(str(files["mp4"])) as container:
        decoded = [f.to_image() for f in container.decode(video=0)]
        stream = container.streams.video[0]
        assert stream.average_rate == 4  # 250 ms a frame
        prompt = json.loads(container.metadata["prompt"])
    assert frame_indices(decoded) == list(range(COUNT))
    assert prompt["3"]["class_type"] == "KontextSaveSweep"
    with Image.open(files["sheet"]) as sheet:
        assert json.loads(sheet.text["prompt"])["3"]["class_type"] == "KontextSaveSweep"
    with Image.open(files["webp"]) as im:
        assert json.loads(im.getexif()[0x0110].removeprefix("prompt:"))["1"]["class_type"] == "KSTestSweepFrames"


def test_ping_pong_duration_and_loop(folders):
    out, _ = folders
    output = run_ok(sweep_graph(ping_pong=True, frame_duration_ms=120, loop=3, mp4=False, contact_sheet=False))
    files = files_of(output, out)
    assert set(files) == {"webp", "gif"}
    for kind, path in files.items():
        with Image.open(path) as im:
            frames = [f.copy() for f in ImageSequence.Iterator(im)]
            assert im.info.get("loop") == 3, kind
        assert len(frames) == 2 * COUNT - 2, kind
        assert frame_indices(frames) == [0, 1, 2, 3, 4, 3, 2, 1], kind
        assert [f.info["duration"] for f in frames] == [120] * len(frames), kind


def test_contact_sheet_has_one_labelled_cell_per_value(folders):
    from kontext_sliders.nodes.sweep.media import sheet_grid
    out, _ = folders
    output = run_ok(sweep_graph(webp=False, gif=False, mp4=False))
    [result] = output["images"]
    columns, rows = sheet_grid(COUNT)
    assert (columns, rows) == (3, 2)
    with Image.open(out / result["subfolder"] / result["filename"]) as sheet:
        strip = (sheet.height - rows * HEIGHT) // rows
        assert sheet.size == (columns * WIDTH, rows * (HEIGHT + strip))
        a = np.asarray(sheet.convert("L"), dtype=np.int16)
    cells = [(k % columns * WIDTH, k // columns * (HEIGHT + strip)) for k in range(COUNT)]
    truth = expected_frames()
    labels = []
    for k, (x, y) in enumerate(cells):
        picture = np.asarray(Image.open(out / result["subfolder"] / result["filename"]).convert("RGB"),
                             dtype=np.float32)[y:y + HEIGHT, x:x + WIDTH]
        assert np.abs(picture - truth[k]).mean() < 3, f"cell {k} does not show frame {k}"
        label = a[y + HEIGHT:y + HEIGHT + strip, x:x + WIDTH]
        assert (label < 128).sum() > 10, f"cell {k}: no label text drawn"
        labels.append(label)
    # -0.5, 0, 0.5, 1, 1.5: every label differs from every other
    assert all(not np.array_equal(labels[i], labels[j]) for i in range(COUNT) for j in range(i + 1, COUNT))
    unused = a[HEIGHT + strip:, 2 * WIDTH:]  # the empty sixth cell stays blank
    assert (unused == 255).all()


def test_counter_increments_and_files_are_kept(folders):
    out, _ = folders
    graph = sweep_graph(filename_prefix="counted", webp=True, gif=False, mp4=False, contact_sheet=False)
    first = run_ok(graph)["images"][0]["filename"]
    graph["3"]["inputs"]["frame_duration_ms"] = 260  # a changed input: not served from the cache
    second = run_ok(graph)["images"][0]["filename"]
    assert (first, second) == ("counted_00001_.webp", "counted_00002_.webp")
    assert (out / first).is_file() and (out / second).is_file()


@pytest.mark.parametrize("node", ["KontextSaveSweep", "KontextSweepPreview"])
def test_frame_count_must_match_the_sweep(folders, node):
    ok, messages, _ = run_prompt(sweep_graph(node, count=4, frames=COUNT))
    assert not ok
    error = next(data for event, data in messages if event == "execution_error")
    assert "images has 5 frame(s) but the sweep has 4 value(s) (-0.5, 0.167, 0.833, 1.5)" in error["exception_message"]


def test_all_formats_off_is_an_error(folders):
    ok, messages, _ = run_prompt(sweep_graph(webp=False, gif=False, mp4=False, contact_sheet=False))
    assert not ok
    assert any("every format is switched off" in data.get("exception_message", "") for _, data in messages)


def test_preview_sends_frames_in_order_with_values_labels_and_source(folders):
    _, temp = folders
    graph = sweep_graph("KontextSweepPreview")
    graph["4"] = {"class_type": "KSTestSweepFrames", "inputs": {"count": 1, "width": 32, "height": 32}}
    graph["3"]["inputs"]["source"] = ["4", 0]
    output = run_ok(graph)
    assert set(output) == {"kontext_sweep"}  # nothing under "images": the front-end would draw a grid
    [info] = output["kontext_sweep"]
    assert info["values"] == [-0.5, 0.0, 0.5, 1.0, 1.5]
    assert info["labels"] == ["-0.5", "0", "0.5", "1", "1.5"]
    assert info["spacing"] == "linear" and info["knob"] == ""
    assert len(info["frames"]) == COUNT and all(f["type"] == "temp" for f in info["frames"])
    decoded = [Image.open(temp / f["subfolder"] / f["filename"]) for f in info["frames"]]
    assert frame_indices(decoded) == list(range(COUNT))
    with Image.open(temp / info["source"]["subfolder"] / info["source"]["filename"]) as source:
        assert source.size == (32, 32)
