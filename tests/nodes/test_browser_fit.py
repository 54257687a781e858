"""Every example workflow fits a 1600x1000 browser window on load, as a new user opens it: in the real front-end
(headless Chromium against a real server on 127.0.0.1, the fixtures of test_browser.py), each node, title
included, lies on the visible canvas: inside the window and under no part of the app (the tab bar and menus,
the side bar, the action bar, the minimap, the canvas menu). Checked point by point with
document.elementFromPoint on a grid over each node's box on screen: the topmost element there must be the
canvas or a part of a node (its DOM widgets), never the app's chrome; and no two nodes overlap.

Every wait is on a condition, never a sleep.
"""
import json

import pytest

import test_browser as B
from test_browser import WORKFLOWS, errors

pytestmark = [pytest.mark.comfyui, pytest.mark.usefixtures("returning_user")]
WINDOW = {"width": 1600, "height": 1000}

# test_browser.py's fixtures: the server with this pack, Chromium, a page on the server, the screenshot folder
server, browser, page, shots, returning_user = B.server, B.browser, B.page, B.shots, B.returning_user

# Each node's box on screen (title bar included) and, on a grid of points over it, what is on top there.
LOAD = """async ([workflow, name]) => {
    await app.extensionManager.setting.set('Comfy.Workflow.ShowMissingModelsWarning', false);
    await app.loadGraphData(workflow, true, true, name);
}"""
# front-end 1.49+ lists the model files this bare server lacks in an error overlay (a pinia store holds them)
MISSING_MODELS_SHOWN = """() => {
    const pinia = document.querySelector('#vue-app')?.__vue_app__?.config.globalProperties.$pinia;
    const store = pinia?._s.get('missingModel');
    return !store || !!document.querySelector('[data-testid="error-overlay"]');
}"""
COVERED = """async () => {
    await new Promise(requestAnimationFrame);  // one frame: the canvas and its DOM widgets are placed
    await new Promise(requestAnimationFrame);
    const canvas = app.canvas.canvas, rect = canvas.getBoundingClientRect(), ds = app.canvas.ds;
    const title = LiteGraph.NODE_TITLE_HEIGHT;
    const describe = e => e ? `${e.tagName.toLowerCase()}.${String(e.className).split(" ").slice(0, 3).join(".")}` : "outside the window";
    const part = e => e && (e === canvas || e.closest('.dom-widget') || e.closest('[data-node-id]'));
    return { scale: ds.scale, nodes: app.graph.nodes.map(node => {
        const [x, y] = ds.convertOffsetToCanvas([node.pos[0], node.pos[1] - title]);
        const box = { x: rect.x + x, y: rect.y + y, width: node.size[0] * ds.scale,
                      height: (node.size[1] + title) * ds.scale };
        const covered = [];
        const step = 12;
        for (let px = box.x + 1; px <= box.x + box.width - 1; px += Math.min(step, box.width / 2)) {
            for (let py = box.y + 1; py <= box.y + box.height - 1; py += Math.min(step, box.height / 2)) {
                const hit = document.elementFromPoint(px, py);
                if (!part(hit)) covered.push(`${describe(hit)} at ${Math.round(px)},${Math.round(py)}`);
            }
        }
        return { id: node.id, title: node.title, box, covered: [...new Set(covered.map(c => c.split(" at ")[0]))],
                 first: covered[0] ?? null };
    }) };
}"""


@pytest.fixture
def window(page):
    """The page at 1600x1000."""
    page.set_viewport_size(WINDOW)
    page.wait_for_function(f"() => app.canvas.canvas.clientWidth === {WINDOW['width']}")
    return page


@pytest.mark.slow  # a browser against a real server: the slow tier
@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_example_workflow_fits_a_1600x1000_window(window, server, path, shots):
    page = window
    workflow = json.loads(path.read_text(encoding="utf-8"))
    from playwright.sync_api import expect
    page.evaluate(LOAD, [workflow, path.name])
    page.wait_for_function("() => !document.querySelector('.p-blockui-mask')")  # the load's busy mask
    # a user with the models has no error overlay; here it lists the absent model files: closed
    page.wait_for_function(MISSING_MODELS_SHOWN)
    overlay = page.locator('[data-testid="error-overlay"]')
    if overlay.count():
        overlay.locator('button[aria-label="Close"]').click()
        expect(overlay).to_have_count(0)
    result = page.evaluate(COVERED)
    page.screenshot(path=shots / f"fit_{path.stem}.png")
    assert len(result["nodes"]) == len(workflow["nodes"])
    hidden = [(n["title"], n["covered"], n["first"]) for n in result["nodes"] if n["covered"]]
    assert hidden == [], f"{path.name} at zoom {result['scale']:.2f}: nodes not fully on the visible canvas " \
                         f"(screenshot {shots / ('fit_' + path.stem + '.png')})"
    boxes = [(n["title"], n["box"]) for n in result["nodes"]]
    overlapping = [(a, b) for i, (a, p) in enumerate(boxes) for b, q in boxes[i + 1:] if overlap(p, q)]
    assert overlapping == [], f"{path.name}: nodes drawn over each other"
    assert errors(page, server) == [], page.errors


def overlap(p: dict, q: dict) -> bool:
    """Two boxes on screen share more than a pixel's width."""
    return min(p["x"] + p["width"], q["x"] + q["width"]) - max(p["x"], q["x"]) > 1 and \
        min(p["y"] + p["height"], q["y"] + q["height"]) - max(p["y"], q["y"]) > 1
