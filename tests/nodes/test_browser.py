"""The pack in the real ComfyUI front-end: headless Chromium (Debian's, driven by Playwright) against a
real server on 127.0.0.1 (tests/comfy_server.py).

- every example workflow loads with no console error and no missing node (and no node flagged, but for a
  model file this server lacks: front-end 1.49+ flags those loaders in place of its Missing Models dialog);
- a sweep queued from the page reaches Kontext Sweep Preview: dragging the slider and the arrow keys
  change the shown frame (img src) and its value label, play advances frames; in the classic canvas
  and with the Vue node renderer.

Every wait is on a condition (Playwright's wait_for_function / expect) with a timeout, never a sleep.
"""
import contextlib
import json
import re
import shutil
import sys
import urllib.parse
import urllib.request

import pytest

import ks_fixtures as F
from comfy_server import ComfyServer

pytestmark = pytest.mark.comfyui
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WORKFLOWS = sorted((F.PACK_DIR / "example_workflows").glob("*.json"))
# workflows as users saved them before a node gained an input: they must load as they did (tests/data)
SAVED = sorted((F.PACK_DIR / "tests" / "data" / "saved_workflows").glob("*.json"))
TIMEOUT_MS = 60_000
SCHEDULED_KNOBS = ("KontinuousKontextApply", "KontextModulationStrength", "KontextInstructionSliders",
                   "KontextInstructionGuidance", "SliderEditApply", "NumeriKontrolEdit", "KontextEditVelocity")
# What a fresh front-end asks for and a bare server answers with 404 (an empty user folder, no custom
# CSS, no favicon): ignored at start-up only. Anything else logged as an error fails the test.
FIRST_RUN_404 = ("/api/userdata/user.css", "/user.css", "/favicon.ico", "/api/userdata?dir=workflows",
                 "/api/userdata?dir=subgraphs", "/api/userdata/comfy.templates.json")
# What front-end 1.49+ (ComfyUI 0.33) logs by itself at start-up, with no custom node installed: its own
# components read app.rootGraph before the graph exists. Ignored only when no script of a custom node
# (nothing served under /extensions/) is on the call's stack, async parents included (read over CDP).
FRONTEND_OWN_ERRORS = ("ComfyApp graph accessed before initialization",)
# With --disable-api-nodes (tests/comfy_server.py) ComfyUI sends a Content-Security-Policy (connect-src 'self');
# front-end 1.49+ (ComfyUI 0.33) probes each missing model's download link, which the browser then refuses
# (and logs) before this test's route would abort it.
CSP_REFUSED = re.compile(r"console: (?:Connecting to '(?P<a>[^']+)' violates the following Content Security Policy "
                         r"directive: .*|Fetch API cannot load (?P<b>\S+)\. Refused to connect because it violates the "
                         r"document's Content Security Policy\.) \((?P<source>[^ ]+)\)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    F.find_comfyui() or pytest.skip(F.SKIP_NO_COMFY)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("browser test skipped: the playwright package is not installed (pip install -e '.[test]')")
    if CHROMIUM is None:
        pytest.skip("browser test skipped: no chromium on PATH (Debian: apt-get install chromium)")
    base = tmp_path_factory.mktemp("comfy_base")
    example = F.find_comfyui() / "input" / "example.png"  # the image the example workflows' LoadImage names
    if example.is_file():
        (base / "input").mkdir()
        shutil.copy(example, base / "input" / example.name)
    server = ComfyServer(base, {"kontext_sliders": F.PACK_DIR, "ks_test_nodes": F.PACK_DIR / "tests" / "comfy_test_nodes"})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def returning_user(server):
    """A first visit opens the templates browser over the canvas; a returning user's settings do not."""
    request = urllib.request.Request(f"{server.url}/settings/Comfy.TutorialCompleted", data=b"true", method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).close()


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        # nothing but 127.0.0.1 resolves: the front-end's update check (api.comfy.org) never leaves the machine
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("screenshots")
    print(f"\nbrowser screenshots: {folder}")
    return folder


def errors(page, server):
    """Console errors and page errors, less the requests this test blocks (anything not on 127.0.0.1: the
    update check, the example workflows' model download links) and the front-end's own start-up noise
    (FRONTEND_OWN_ERRORS, only as long as no custom node's script is on its stack)."""
    page.evaluate("0")  # a round trip: the CDP console events sent before it have been dispatched
    return [e for e in page.errors if not ("Failed to load resource: net::ERR_FAILED" in e and f"({server.url}" not in e)
            and not refused_by_csp(server, e) and not frontend_own(page, server, e)]


def refused_by_csp(server, error: str) -> bool:
    """A request of the front-end's own bundle (/assets/) to anywhere but this server, refused by the CSP."""
    m = CSP_REFUSED.fullmatch(error)
    return bool(m) and not (m["a"] or m["b"]).startswith(server.url) and m["source"].startswith(f"{server.url}/assets/")


def frontend_own(page, server, error: str) -> bool:
    """``error`` is one of FRONTEND_OWN_ERRORS, logged from the front-end's bundle (/assets/), and every time
    it was logged the stack held no script under /extensions/ (where custom nodes' web files are served)."""
    for text in FRONTEND_OWN_ERRORS:
        if error.startswith(f"console: {text} ({server.url}/assets/"):
            stacks = [urls for logged, urls in page.console_stacks if logged == text]
            return bool(stacks) and not any("/extensions/" in url for urls in stacks for url in urls)
    return False


def record_console_stacks(page):
    """page.console_stacks: (text, every script URL on the stack, async parents included) per console.error,
    from Chromium's DevTools protocol (Playwright's console message has only the calling line)."""
    page.console_stacks = []

    def logged(event):
        if event["type"] != "error":
            return
        text = " ".join(str(a.get("value", a.get("description", ""))) for a in event["args"])
        urls, trace = [], event.get("stackTrace")
        while trace:
            urls += [frame["url"] for frame in trace["callFrames"]]
            trace = trace.get("parent")
        page.console_stacks.append((text, urls))

    cdp = page.context.new_cdp_session(page)
    cdp.on("Runtime.consoleAPICalled", logged)
    cdp.send("Runtime.enable")
    cdp.send("Runtime.setAsyncCallStackDepth", {"maxDepth": 64})


@pytest.fixture
def page(browser, server):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    page.route(lambda url: not url.startswith(server.url), lambda route: route.abort())
    page.errors = []
    record_console_stacks(page)
    page.on("console", lambda m: page.errors.append(f"console: {m.text} ({m.location.get('url')})")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(f"page error: {e}"))
    page.goto(server.url)
    page.wait_for_function("() => window.app?.graph && window.app.extensions?.length && window.LiteGraph")
    startup = [e for e in errors(page, server) if not any(f"({server.url}{p}" in e for p in FIRST_RUN_404)]
    assert startup == [], startup
    page.errors.clear()
    yield page
    page.close()


@pytest.mark.slow  # a browser against a real server: the slow tier
def test_the_extension_registers_once(page, server):
    names = page.evaluate("() => app.extensions.map(e => e.name)")
    assert names.count("KontextSliders.SweepPreview") == 1, names
    assert errors(page, server) == []


@pytest.mark.slow  # a browser against a real server: the slow tier
@pytest.mark.parametrize("path", WORKFLOWS + SAVED, ids=lambda p: p.name)
def test_example_workflow_loads_without_errors_or_missing_nodes(page, server, path, shots):
    workflow = json.loads(path.read_text(encoding="utf-8"))
    result = page.evaluate("""async ([workflow, name]) => {
        // the models are absent here by design; their dialog would probe download sizes on the internet
        await app.extensionManager.setting.set('Comfy.Workflow.ShowMissingModelsWarning', false);
        const missing = [];
        const show = app.showMissingNodesError;  // record what the missing-node dialog would list
        app.showMissingNodesError = (types) => { missing.push(...types); };
        try { await app.loadGraphData(workflow, true, true, name); } finally { app.showMissingNodesError = show; }
        // why a node is flagged (front-end 1.49+): its Pinia stores; absent in older front-ends
        const pinia = document.querySelector('#vue-app')?.__vue_app__?.config.globalProperties.$pinia;
        const store = id => pinia?._s.get(id);
        const plain = v => JSON.parse(JSON.stringify(v ?? null));
        const flagged = app.graph.nodes.filter(n => n.has_errors);
        return { missing, nodes: app.graph.nodes.length, broken: flagged.map(n => n.type),
                 flagged: flagged.map(n => ({ id: String(n.id), type: n.type,
                                              widgets: Object.fromEntries((n.widgets ?? []).map(w => [w.name, w.value])) })),
                 missingModels: (plain(store('missingModel')?.missingModelCandidates) ?? []).map(c =>
                     ({ nodeId: String(c.nodeId), widgetName: c.widgetName, name: c.name, isMissing: c.isMissing })),
                 nodeErrors: plain(store('executionError')?.lastNodeErrors),
                 missingMedia: plain(store('missingMedia')?.missingMediaCandidates) };
    }""", [workflow, path.name])
    # the front-end checks a loaded workflow against its schema and reports a mismatch in an alert, not
    # in the console
    assert "Invalid workflow" not in page.locator("body").inner_text(), f"{path.name} fails the front-end's schema"
    page.screenshot(path=shots / f"{path.stem}.png")
    assert result["missing"] == [] and not result["nodeErrors"] and not result["missingMedia"], result
    assert [n for n in result["flagged"] if not flagged_only_for_a_missing_model(n, result, server)] == [], result
    assert result["nodes"] == len(workflow["nodes"])
    assert errors(page, server) == [], page.errors
    # every saved widget value is where it was; an input added since takes its default
    for saved in workflow["nodes"]:
        widgets = page.evaluate("(id) => app.graph.getNodeById(id).widgets?.filter(w => w.serialize !== false)"
                                ".map(w => [w.name, w.value]) ?? []", saved["id"])
        values = [v for name, v in widgets if name != "control_after_generate"]
        kept = [v for v in saved.get("widgets_values") or [] if v not in ("fixed", "randomize", "increment")]
        if saved["type"] == "KontextMultiInstructionEncode":
            assert values[:len(kept)] == kept and values[len(kept):] in ([], ["TextEncodeQwenImageEditPlus"]), \
                (saved["id"], widgets)
        if saved["type"] in SCHEDULED_KNOBS:  # saved before start_percent / end_percent: every step
            assert values[:len(kept)] == kept and values[len(kept):] in ([], [0, 1]), (saved["id"], widgets)


def flagged_only_for_a_missing_model(node, result, server) -> bool:
    """The front-end lists ``node`` among its missing models, for nothing but widgets whose value (the file the
    workflow names) is a file this server does not offer (this test's models folder is empty)."""
    candidates = [c for c in result["missingModels"] if c["nodeId"] == node["id"]]
    return bool(candidates) and all(
        c["isMissing"] and node["widgets"].get(c["widgetName"]) == c["name"]
        and c["name"] not in combo_options(server, node["type"], c["widgetName"]) for c in candidates)


def combo_options(server, node_type: str, input_name: str) -> list:
    """The options the server offers for a combo input (its /object_info; both schema spellings)."""
    with urllib.request.urlopen(f"{server.url}/api/object_info/{urllib.parse.quote(node_type)}", timeout=30) as r:
        inputs = json.load(r)[node_type]["input"]
    spec = {**inputs.get("optional", {}), **inputs["required"]}[input_name]
    return spec[0] if isinstance(spec[0], list) else spec[1]["options"]


def build_and_queue_sweep(page):
    """A real sweep on the tiny model: tiny Flux -> Modulation Strength -> Kontext Sweep Sampler (0 ... 2, 5
    values) -> frames -> KontextSweepPreview (source beside it), queued from the page."""
    page.evaluate("""async () => {
        app.graph.clear();
        const add = (type, pos, values = {}) => {
            const node = LiteGraph.createNode(type);
            node.pos = pos;
            for (const [name, value] of Object.entries(values)) node.widgets.find(w => w.name === name).value = value;
            app.graph.add(node);
            return node;
        };
        const model = add("KSTestTinyFlux", [20, 40], { seed: 0 });
        const edit = add("KSTestEditInputs", [20, 160], { seed: 1 });
        const latent = add("KSTestLatent", [20, 280], { seed: 2, batch: 1 });
        const knob = add("KontextModulationStrength", [20, 400]);
        const sweep = add("KontextStrengthSweep", [20, 600], { start: 0, end: 2, count: 5 });
        const sampler = add("KontextSweepSampler", [300, 40], { steps: 2, cfg: 1.0 });
        const frames = add("KSTestLatentToImage", [300, 420], { scale: 16 });
        const source = add("KSTestSweepFrames", [300, 560], { count: 1, width: 128, height: 128 });
        const preview = add("KontextSweepPreview", [600, 40]);
        preview.setSize([560, 440]);
        model.connect(0, knob, 0);
        knob.connect(0, sampler, 0);
        edit.connect(0, sampler, 1);
        edit.connect(0, sampler, 2);
        latent.connect(0, sampler, 3);
        sweep.connect(0, sampler, 4);
        sampler.connect(0, frames, 0);
        frames.connect(0, preview, 0);
        sampler.connect(1, preview, 1);
        source.connect(0, preview, 2);
        app.canvas.ds.scale = 1;
        app.canvas.ds.offset = [20, 60];  // the preview and its title on screen, at full scale
        app.canvas.setDirty(true, true);
        await app.queuePrompt(0);
    }""")


def value_label(value: str):
    """The label shows the value, after the knob's name when the sampler set it ("... multiplier: 0.5")."""
    import re
    return re.compile(rf"^(.*: )?{re.escape(value)}$")


def label(page):
    return page.locator(".kontext-sweep .ks-label").inner_text()


def frame_src(page):
    return page.locator(".kontext-sweep .ks-frame-img").get_attribute("src")


def exercise_scrubber(page, server, shots, name):
    from playwright.sync_api import expect
    build_and_queue_sweep(page)
    root = page.locator(".kontext-sweep")
    expect(root.locator(".ks-label")).to_have_text(value_label("0"), timeout=TIMEOUT_MS)  # the run arrived
    expect(root.locator(".ks-source")).to_be_visible()
    first = frame_src(page)
    assert "/view?" in first and "type=temp" in first
    page.screenshot(path=shots / f"{name}_first.png")

    box = root.locator(".ks-slider").bounding_box()  # drag the thumb from the left end to the right end
    page.mouse.move(box["x"] + 4, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=5)
    page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    expect(root.locator(".ks-label")).to_have_text(value_label("2"))
    last = frame_src(page)
    assert last != first
    root.locator(".ks-frame-img").screenshot(path=shots / f"{name}_dragged.png")

    root.focus()
    page.keyboard.press("ArrowLeft")
    expect(root.locator(".ks-label")).to_have_text(value_label("1.5"))
    assert frame_src(page) not in (first, last)
    page.keyboard.press("Home")
    expect(root.locator(".ks-label")).to_have_text(value_label("0"))
    assert frame_src(page) == first  # the same frame, not a re-run

    root.locator(".ks-play").click()  # play: the frame moves on by itself
    page.wait_for_function("() => document.querySelector('.kontext-sweep').dataset.index !== '0'")
    root.locator(".ks-play").click()
    expect(root.locator(".ks-play")).to_have_text("▶ play")
    root.locator(".ks-slider").press("End")
    expect(root.locator(".ks-label")).to_have_text(value_label("2"))
    assert errors(page, server) == [], page.errors
    return root


@pytest.mark.slow  # a browser against a real server: the slow tier
def test_sweep_preview_scrubs_in_the_classic_canvas(page, server, shots):
    root = exercise_scrubber(page, server, shots, "classic")
    page.keyboard.press("Home")
    page.locator(".kontext-sweep .ks-slider").press("ArrowRight")
    page.keyboard.press("ArrowRight")
    from playwright.sync_api import expect
    expect(root.locator(".ks-label")).to_have_text(value_label("1"))
    clip = page.evaluate("""() => {  // the preview node, title bar included, in page pixels
        const node = app.graph.nodes.find(n => n.type === "KontextSweepPreview");
        const canvas = app.canvas.canvas.getBoundingClientRect();
        const [x, y] = app.canvas.ds.convertOffsetToCanvas([node.pos[0], node.pos[1] - LiteGraph.NODE_TITLE_HEIGHT]);
        const scale = app.canvas.ds.scale;
        return { x: canvas.x + x - 4, y: canvas.y + y - 4, width: node.size[0] * scale + 8,
                 height: (node.size[1] + LiteGraph.NODE_TITLE_HEIGHT) * scale + 8 };
    }""")
    page.screenshot(path=shots / "sweep_preview.png", clip=clip)  # the README's picture (web/docs/)


@contextlib.contextmanager
def vue_nodes(page):
    """The Vue node renderer on within the block (a setting the server keeps: switched back off after)."""
    page.evaluate("() => app.extensionManager.setting.set('Comfy.VueNodes.Enabled', true)")
    try:
        yield
    finally:
        page.evaluate("() => app.extensionManager.setting.set('Comfy.VueNodes.Enabled', false)")


@pytest.mark.slow  # a browser against a real server: the slow tier
def test_sweep_preview_scrubs_with_vue_nodes(page, server, shots):
    with vue_nodes(page):
        exercise_scrubber(page, server, shots, "vue")
        assert page.evaluate("() => !!document.querySelector('[data-node-id] .kontext-sweep')"), \
            "the preview is not inside a Vue node"


def test_the_tolerated_front_end_noise_is_narrow(monkeypatch):
    """What the checks above let through on front-end 1.49+, and nothing next to it (no browser needed)."""
    from types import SimpleNamespace
    server = SimpleNamespace(url="http://127.0.0.1:1")
    own = "console: ComfyApp graph accessed before initialization (http://127.0.0.1:1/assets/settingStore-x.js)"
    page = SimpleNamespace(evaluate=lambda _: 0, errors=[own], console_stacks=[
        ("ComfyApp graph accessed before initialization", ["http://127.0.0.1:1/assets/settingStore-x.js"])])
    assert errors(page, server) == []
    page.console_stacks.append(("ComfyApp graph accessed before initialization",  # a custom node read it early
                                ["http://127.0.0.1:1/assets/a.js", "http://127.0.0.1:1/extensions/pack/x.js"]))
    assert errors(page, server) == [own]
    page.console_stacks.clear()  # no stack seen: not tolerated either
    assert errors(page, server) == [own]
    csp = ("console: Fetch API cannot load https://huggingface.co/m.safetensors. Refused to connect because it "
           "violates the document's Content Security Policy. ({}/x.js)")
    assert refused_by_csp(server, csp.format("http://127.0.0.1:1/assets"))
    assert not refused_by_csp(server, csp.format("http://127.0.0.1:1/extensions/pack"))

    monkeypatch.setattr(sys.modules[__name__], "combo_options", lambda s, t, name: ["present.safetensors"])
    node = {"id": "1", "type": "UNETLoader", "widgets": {"unet_name": "absent.safetensors"}}
    result = {"missingModels": [{"nodeId": "1", "widgetName": "unet_name", "name": "absent.safetensors",
                                 "isMissing": True}]}
    assert flagged_only_for_a_missing_model(node, result, server)
    assert not flagged_only_for_a_missing_model({**node, "id": "2"}, result, server)  # flagged for another reason
    assert not flagged_only_for_a_missing_model({**node, "widgets": {"unet_name": "present.safetensors"}}, result,
                                                server)
