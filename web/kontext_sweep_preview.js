// The Kontext Sweep Preview node's scrubber: one frame at a time, a slider labelled in knob values,
// arrow keys, play / pause, ping-pong, speed, and the source image side by side. Purely client side:
// scrubbing only swaps an <img> among frames the server already sent (ui output "kontext_sweep").
// A DOM widget, so it shows in the LiteGraph canvas and in the Vue node renderer alike.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { addStyleOnce, el } from "./dom_util.js";
import * as L from "./sweep_logic.js";

const NODE = "KontextSweepPreview";

const STYLE = `
.kontext-sweep { display: flex; flex-direction: column; gap: 4px; width: 100%; height: 100%; min-height: 220px;
  box-sizing: border-box; font: 12px sans-serif; color: var(--input-text, #ddd); outline: none; }
.kontext-sweep:focus-visible { box-shadow: 0 0 0 1px var(--p-primary-color, #4a9eff); }
.kontext-sweep .ks-stage { flex: 1 1 auto; min-height: 140px; display: flex; gap: 4px; }
.kontext-sweep figure { flex: 1 1 0; margin: 0; display: flex; flex-direction: column; min-width: 0; }
.kontext-sweep figure img { flex: 1 1 auto; min-height: 0; width: 100%; object-fit: contain; }
.kontext-sweep figcaption { text-align: center; padding-top: 2px; }
.kontext-sweep .ks-label { font-weight: bold; font-size: 13px; }
.kontext-sweep .ks-ticks { position: relative; height: 14px; margin: 0 8px; opacity: 0.75; }
.kontext-sweep .ks-ticks span { position: absolute; transform: translateX(-50%); }
.kontext-sweep .ks-controls { display: flex; gap: 8px; align-items: center; flex-wrap: wrap; }
.kontext-sweep .ks-slider { width: 100%; }
.kontext-sweep .ks-empty { margin: auto; opacity: 0.7; }
`;

function viewUrl(file) {
  const query = new URLSearchParams({ filename: file.filename, subfolder: file.subfolder ?? "", type: file.type });
  return api.apiURL(`/view?${query}${app.getRandParam?.() ?? ""}`);
}

/** Builds the widget's DOM and state for one node; returns { element, show(info), dispose() }. */
function createScrubber() {
  const frameImg = el("img", { className: "ks-frame-img", alt: "sweep frame" });
  const label = el("figcaption", { className: "ks-label" });
  const sourceImg = el("img", { className: "ks-source-img", alt: "source" });
  const sourceFigure = el("figure", { className: "ks-source" }, [sourceImg, el("figcaption", { textContent: "source" })]);
  const stage = el("div", { className: "ks-stage" }, [sourceFigure, el("figure", { className: "ks-frame" }, [frameImg, label])]);
  const slider = el("input", { className: "ks-slider", type: "range", min: 0, max: 1, step: 1, value: 0 });
  const ticks = el("div", { className: "ks-ticks" });
  const play = el("button", { className: "ks-play", textContent: "▶ play", title: "play / pause" });
  const pingPong = el("input", { className: "ks-pingpong", type: "checkbox" });
  const speed = el("select", { className: "ks-speed", title: "playback speed" },
    L.SPEEDS.map((s) => el("option", { value: s, textContent: `${s}×`, selected: s === 1 })));
  const side = el("input", { className: "ks-side", type: "checkbox", checked: true });
  const sideLabel = el("label", {}, [side, " source"]);
  const controls = el("div", { className: "ks-controls" },
    [play, el("label", {}, [pingPong, " ping-pong"]), el("label", {}, ["speed ", speed]), sideLabel]);
  const empty = el("div", { className: "ks-empty", textContent: "Queue the graph to see the sweep here." });
  const root = el("div", { className: "kontext-sweep", tabIndex: 0 }, [empty, stage, slider, ticks, controls]);

  let info = null;
  let index = 0;
  let preloaded = [];
  let playing = null; // { startTime, startCursor, order, raf }

  function render() {
    const has = info !== null;
    empty.hidden = has;
    for (const part of [stage, slider, ticks, controls]) part.style.display = has ? "" : "none";
    if (!has) return;
    frameImg.src = preloaded[index].src;
    label.textContent = info.knob ? `${info.knob}: ${info.labels[index]}` : info.labels[index];
    slider.value = String(index);
    slider.setAttribute("aria-valuetext", info.labels[index]);
    root.dataset.index = String(index);
    const showSource = Boolean(info.source) && side.checked;
    sourceFigure.style.display = showSource ? "" : "none";
    sideLabel.style.display = info.source ? "" : "none";
  }

  function goTo(i) {
    index = L.clampIndex(i, info.labels.length);
    render();
  }

  function stop() {
    if (playing) cancelAnimationFrame(playing.raf);
    playing = null;
    play.textContent = "▶ play";
  }

  function start() {
    const order = L.frameOrder(info.labels.length, pingPong.checked);
    playing = { order, startCursor: L.cursorForIndex(order, index), startTime: performance.now(), raf: 0 };
    play.textContent = "⏸ pause";
    const tick = (now) => {
      if (!playing || !root.isConnected) return stop();
      const cursor = L.playbackCursor(playing.order.length, playing.startCursor, now - playing.startTime,
        L.frameMs(Number(speed.value)));
      if (playing.order[cursor] !== index) goTo(playing.order[cursor]);
      playing.raf = requestAnimationFrame(tick);
    };
    playing.raf = requestAnimationFrame(tick);
  }

  // ping-pong or speed changed mid-play: continue from the frame on screen with the new settings
  const restart = () => { if (playing) { stop(); start(); } };

  slider.addEventListener("input", () => { stop(); goTo(Number(slider.value)); });
  play.addEventListener("click", () => (playing ? stop() : start()));
  pingPong.addEventListener("change", restart);
  speed.addEventListener("change", restart);
  side.addEventListener("change", render);
  root.addEventListener("keydown", (event) => {
    if (!info || event.target === speed) return;
    const next = L.keyStep(event.key, index, info.labels.length);
    if (next === null) return;
    event.preventDefault();
    event.stopPropagation(); // arrows belong to the scrubber, not to canvas shortcuts
    stop();
    goTo(next);
  });
  // the canvas would start a node drag from a press on the slider
  for (const type of ["pointerdown", "mousedown"]) slider.addEventListener(type, (e) => e.stopPropagation());

  function show(newInfo) {
    stop();
    info = newInfo;
    preloaded = info.frames.map((file) => Object.assign(new Image(), { src: viewUrl(file) }));
    if (info.source) sourceImg.src = viewUrl(info.source);
    slider.max = String(info.frames.length - 1);
    ticks.replaceChildren(...L.tickIndices(info.values).map((i) => el("span", {
      textContent: info.labels[i],
      style: `left: ${(100 * i) / (info.frames.length - 1)}%`,
    })));
    goTo(Math.min(index, info.frames.length - 1));
  }

  render();
  return { element: root, show, dispose: stop };
}

addStyleOnce("kontext-sweep-style", STYLE);

app.registerExtension({
  name: "KontextSliders.SweepPreview",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      this.kontextSweep = createScrubber();
      const widget = this.addDOMWidget("kontext_sweep", "kontext_sweep", this.kontextSweep.element, {
        serialize: false, // nothing to save in the workflow or the prompt: the frames come with each run
        hideOnZoom: false,
        getMinHeight: () => 240,
      });
      widget.serialize = false; // the workflow's widgets_values reads this one, the prompt the option
      this.setSize([Math.max(this.size[0], 340), Math.max(this.size[1], 340)]);
      return result;
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      const info = output?.kontext_sweep?.[0];
      if (info) this.kontextSweep?.show(info);
    };

    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      this.kontextSweep?.dispose();
      return onRemoved?.apply(this, arguments);
    };
  },
});
