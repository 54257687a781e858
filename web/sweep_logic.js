// Pure logic of the sweep preview (no DOM, no ComfyUI): which frame a value, key or clock means.
// Unit-tested with `node --test tests/web/`; the widget in kontext_sweep_preview.js only wires it up.

export const BASE_FRAME_MS = 400; // one frame per 400 ms at speed 1 (KontextSaveSweep's default too)
export const SPEEDS = [0.25, 0.5, 1, 2, 4];

/** A value as a short label, as core/sweep.py's format_value: 0.375, 0.333, 2, never "-0". */
export function formatValue(value) {
  const text = value.toFixed(3).replace(/0+$/, "").replace(/\.$/, "");
  return text === "-0" || text === "" ? "0" : text;
}

/** The index of the sweep value nearest to `value` (first one on a tie). */
export function nearestIndex(values, value) {
  let best = 0;
  for (let i = 1; i < values.length; i++) {
    if (Math.abs(values[i] - value) < Math.abs(values[best] - value)) best = i;
  }
  return best;
}

export function clampIndex(index, count) {
  return Math.min(Math.max(0, Math.round(index)), count - 1);
}

/** Keyboard stepping: arrows one frame, PageUp/PageDown a tenth of the sweep, Home/End the ends.
 *  Returns the new index, or null for a key the preview does not use (let it through). */
export function keyStep(key, index, count) {
  const page = Math.max(1, Math.round(count / 10));
  const moves = { ArrowRight: 1, ArrowUp: 1, ArrowLeft: -1, ArrowDown: -1, PageUp: page, PageDown: -page };
  if (key === "Home") return 0;
  if (key === "End") return count - 1;
  return key in moves ? clampIndex(index + moves[key], count) : null;
}

/** Frames to play: 0..N-1, and with ping-pong back down to 1 (2N-2 frames, ends not doubled),
 *  as core/sweep.py's frame_order. */
export function frameOrder(count, pingPong) {
  const forward = Array.from({ length: count }, (_, i) => i);
  return pingPong && count > 2 ? forward.concat(forward.slice(1, -1).reverse()) : forward;
}

/** Where in `order` playback continues from when frame `index` is on screen (forward first). */
export function cursorForIndex(order, index) {
  const at = order.indexOf(index);
  return at < 0 ? 0 : at;
}

export function frameMs(speed) {
  return BASE_FRAME_MS / speed;
}

/** The playback cursor `elapsedMs` after starting at `startCursor`, looping over `order`.
 *  Computed from the clock, not by counting ticks, so slow or dropped animation frames never slow
 *  playback down. */
export function playbackCursor(orderLength, startCursor, elapsedMs, msPerFrame) {
  const advanced = Math.floor(Math.max(0, elapsedMs) / msPerFrame);
  return (startCursor + advanced) % orderLength;
}

/** Ticks under the slider: the first, the last, and value 0 / 1 when the sweep crosses them. */
export function tickIndices(values) {
  const ticks = new Set([0, values.length - 1]);
  for (const mark of [0, 1]) {
    const lo = Math.min(values[0], values[values.length - 1]);
    const hi = Math.max(values[0], values[values.length - 1]);
    if (mark > lo && mark < hi) ticks.add(nearestIndex(values, mark));
  }
  return [...ticks].sort((a, b) => a - b);
}
