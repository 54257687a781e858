"""The per-line strength sliders (web/kontext_strength_sliders.js) in the real front-end: headless Chromium
(Debian's, driven by Playwright) against a real server on 127.0.0.1, in the classic canvas and with the
Vue node renderer (the fixtures of test_browser.py).

- Multi-Instruction Encode -> FluxGuidance -> Instruction Sliders: one labelled slider per line; dragging a
  slider and typing in its number box rewrite the strengths text, which is what the workflow saves and
  what the queued prompt (app.graphToPrompt) sends, and the value saved (the sliders never serialise);
  editing the text moves the sliders; a line typed in the encoder adds a slider (value 1), reordered lines
  keep their values; after a page reload (the workflow the front-end persisted) the values are there.

Every wait is on a condition (Playwright's wait_for_function / expect) with a timeout, never a sleep.
"""
import pytest

import test_browser as B
from test_browser import FIRST_RUN_404, errors, vue_nodes

# test_browser.py's fixtures: the server with this pack, Chromium, a page on the server, the screenshot folder
server, browser, page, shots, returning_user = B.server, B.browser, B.page, B.shots, B.returning_user

pytestmark = [pytest.mark.comfyui, pytest.mark.usefixtures("returning_user")]
LINES = ["make the sky stormy", "turn the car red"]
ADDED = "add snow on the roof of the little house"  # longer than a label: the label is its start



BUILD = """async ([lines]) => {
    app.graph.clear();
    const add = (type, pos) => {
        const node = LiteGraph.createNode(type);
        node.pos = pos;
        app.graph.add(node);
        return node;
    };
    const encoder = add("KontextMultiInstructionEncode", [40, 80]);
    encoder.widgets.find(w => w.name === "instructions").value = lines.join("\\n");
    const guidance = add("FluxGuidance", [480, 80]);  // the lines are found through it
    const sliders = add("KontextInstructionSliders", [800, 80]);
    encoder.connect(0, guidance, 0);
    guidance.connect(0, sliders, sliders.inputs.findIndex(i => i.name === "conditioning"));
    app.canvas.ds.scale = 1;
    app.canvas.ds.offset = [20, 40];
    app.canvas.setDirty(true, true);
    return sliders.id;
}"""

# the sliders node's strengths text, what the workflow saves and what the prompt sends
STATE = """async () => {
    const node = app.graph.nodes.find(n => n.type === "KontextInstructionSliders");
    const prompt = await app.graphToPrompt();
    const saved = prompt.workflow.nodes.find(n => String(n.id) === String(node.id));
    return { text: node.widgets.find(w => w.name === "strengths").value,
             api: prompt.output[String(node.id)].inputs.strengths,
             apiInputs: Object.keys(prompt.output[String(node.id)].inputs).sort(),
             saved: saved.widgets_values };
}"""


def sliders(page):
    return page.locator(".kontext-strengths .kss-row")


def rows(page):
    """(label, slider value, number box value) per row."""
    return page.evaluate("""() => [...document.querySelectorAll('.kontext-strengths .kss-row')].map(r =>
        [r.querySelector('.kss-label').textContent, r.querySelector('.kss-slider').value,
         r.querySelector('.kss-number').value])""")


def expect_text(page, text):
    page.wait_for_function("""(text) => app.graph.nodes.find(n => n.type === "KontextInstructionSliders")
        ?.widgets.find(w => w.name === "strengths").value === text""", arg=text)


def check_state(page, text):
    """The text is ``text`` in the widget, in the queued prompt and in the saved workflow, whose other values are
    only the schedule inputs' defaults (the sliders add none)."""
    expect_text(page, text)
    state = page.evaluate(STATE)
    assert state["api"] == text and state["saved"] == [text, 0, 1], state
    assert "strength_sliders" not in state["apiInputs"], state


def drag(page, slider, fraction):
    """Press on the slider's thumb and drag it to ``fraction`` of the track."""
    slider.hover()  # waits until it is visible, still (placed by the canvas's draw) and takes the pointer
    box = slider.bounding_box()
    low, high = (float(slider.get_attribute(k)) for k in ("min", "max"))
    at = (float(slider.input_value()) - low) / (high - low)
    y = box["y"] + box["height"] / 2
    thumb = 8  # the thumb's half width: the track runs from thumb to width - thumb
    x = lambda f: box["x"] + thumb + f * (box["width"] - 2 * thumb)  # noqa: E731
    page.mouse.move(x(at), y)
    page.mouse.down()
    page.mouse.move((x(at) + x(fraction)) / 2, y, steps=4)
    page.mouse.move(x(fraction), y, steps=4)
    page.mouse.up()


def edit_text(page, vue: bool, text: str):
    """Types ``text`` into the strengths widget as a user does: the Vue node's text box, or the canvas's
    prompt dialog that a click on the text widget opens."""
    node_id = page.evaluate("() => app.graph.nodes.find(n => n.type === 'KontextInstructionSliders').id")
    if vue:
        box = page.locator(f'[data-node-id="{node_id}"] input.p-inputtext[aria-label="strengths"]')
    else:
        x, y = page.evaluate("""(id) => {
            const node = app.graph.getNodeById(id), widget = node.widgets.find(w => w.name === "strengths");
            const rect = app.canvas.canvas.getBoundingClientRect();
            const [x, y] = app.canvas.ds.convertOffsetToCanvas(
                [node.pos[0] + node.size[0] / 2, node.pos[1] + (widget.last_y ?? widget.y) + 10]);
            return [rect.x + x, rect.y + y];
        }""", node_id)
        page.mouse.click(x, y)
        box = page.locator(".graphdialog input")
    box.fill(text)
    box.press("Enter")


def exercise_sliders(page, server, shots, name):
    from playwright.sync_api import expect
    page.evaluate(BUILD, [LINES])
    expect(sliders(page)).to_have_count(2)
    in_vue_node = page.evaluate("() => !!document.querySelector('[data-node-id] .kontext-strengths')")
    assert in_vue_node == (name == "vue"), "the sliders are not where the renderer draws nodes"
    assert rows(page) == [[LINES[0], "1", "1"], [LINES[1], "1", "1"]]
    check_state(page, "1, 1")
    page.screenshot(path=shots / f"sliders_{name}_start.png")

    drag(page, sliders(page).nth(1).locator(".kss-slider"), 0.0)  # the car line down to the range's end, -1
    check_state(page, "1, -1")
    assert rows(page)[1][1:] == ["-1", "-1"]

    number = sliders(page).nth(0).locator(".kss-number")  # an exact value in the number box
    number.fill("0.35")
    number.press("Enter")
    check_state(page, "0.35, -1")
    assert rows(page)[0][1:] == ["0.35", "0.35"]  # the slider's step (0.05) holds 0.35
    number.fill("7")  # out of range: held at the end of the range
    number.press("Enter")
    check_state(page, "3, -1")
    number.fill("0.35")
    number.press("Enter")
    check_state(page, "0.35, -1")

    instructions = page.locator("textarea")  # the encoder's lines: a line typed at the end
    expect(instructions).to_have_count(1)
    expect(instructions).to_have_value("\n".join(LINES))
    instructions.click()
    instructions.press("Control+End")
    instructions.press_sequentially(f"\n{ADDED}")
    expect(sliders(page)).to_have_count(3)
    check_state(page, "0.35, -1, 1")
    assert rows(page)[2] == ["add snow on the roof of…", "1", "1"]
    assert sliders(page).nth(2).locator(".kss-label").get_attribute("title") == ADDED
    page.screenshot(path=shots / f"sliders_{name}_three_lines.png")

    instructions.fill("\n".join([ADDED, LINES[1], LINES[0]]))  # reordered: the values follow their lines
    check_state(page, "1, -1, 0.35")
    assert [r[0] for r in rows(page)] == ["add snow on the roof of…", LINES[1], LINES[0]]
    instructions.fill("\n".join([ADDED, LINES[0]]))  # a line removed: its value goes
    expect(sliders(page)).to_have_count(2)
    check_state(page, "1, 0.35")
    instructions.fill("\n".join([ADDED, LINES[1], LINES[0]]))  # and comes back as written (1)
    check_state(page, "1, 1, 0.35")

    edit_text(page, name == "vue", "0.5, 1.5, -0.75")  # the text typed: the sliders follow
    check_state(page, "0.5, 1.5, -0.75")
    page.wait_for_function("""() => [...document.querySelectorAll('.kontext-strengths .kss-number')].map(i => i.value)
        .join() === '0.5,1.5,-0.75'""")
    assert [r[1] for r in rows(page)] == ["0.5", "1.5", "-0.75"]
    edit_text(page, name == "vue", "1, 1, 0.35")
    check_state(page, "1, 1, 0.35")

    drag(page, sliders(page).nth(1).locator(".kss-slider"), 0.75)  # 2 on -1 ... 3
    check_state(page, "1, 2, 0.35")
    assert errors(page, server) == [], page.errors
    crop = sliders(page).nth(0).locator("xpath=ancestor::*[contains(@class, 'kontext-strengths')]")
    crop.screenshot(path=shots / f"sliders_{name}_widget.png")

    # the workflow the front-end persisted (its local storage, as JSON or as a JSON string in JSON: 1.49+'s
    # drafts) comes back after a reload, with the values
    page.errors.clear()
    page.wait_for_function("""() => [localStorage, sessionStorage].some(s => Object.keys(s).some(k =>
        /[\\\\]?"1, 2, 0.35[\\\\]?"/.test(s.getItem(k))))""")
    page.reload()
    page.wait_for_function("() => window.app?.graph?.nodes.some(n => n.type === 'KontextInstructionSliders')")
    expect(sliders(page)).to_have_count(3)
    check_state(page, "1, 2, 0.35")
    assert rows(page) == [["add snow on the roof of…", "1", "1"], [LINES[1], "2", "2"], [LINES[0], "0.35", "0.35"]]
    page.screenshot(path=shots / f"sliders_{name}_reloaded.png")
    # a fresh page start asks again for what a bare server lacks (test_browser.FIRST_RUN_404)
    page.errors[:] = [e for e in page.errors if not any(f"({server.url}{p}" in e for p in FIRST_RUN_404)]
    assert errors(page, server) == [], page.errors


@pytest.mark.slow  # a browser against a real server: the slow tier
def test_strength_sliders_in_the_classic_canvas(page, server, shots):
    exercise_sliders(page, server, shots, "classic")


@pytest.mark.slow  # a browser against a real server: the slow tier
def test_strength_sliders_with_vue_nodes(page, server, shots):
    with vue_nodes(page):
        exercise_sliders(page, server, shots, "vue")
