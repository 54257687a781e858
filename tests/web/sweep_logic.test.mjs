// node --test tests/web/ : the sweep preview's pure logic (web/sweep_logic.js).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  clampIndex, cursorForIndex, formatValue, frameMs, frameOrder, keyStep, nearestIndex, playbackCursor, tickIndices,
} from "../../web/sweep_logic.js";

test("labels match core/sweep.py's format_value", () => {
  assert.deepEqual([0.375, 1 / 3, 2, -0, 1e-9, -0.25, -0.0001].map(formatValue),
    ["0.375", "0.333", "2", "0", "0", "-0.25", "0"]);
});

test("value to index: nearest, increasing or decreasing sweeps", () => {
  assert.equal(nearestIndex([0, 0.25, 0.5, 0.75, 1], 0.6), 2);
  assert.equal(nearestIndex([0, 0.25, 0.5, 0.75, 1], 7), 4);
  assert.equal(nearestIndex([1.5, 0.5, -0.5], -0.4), 2);
  assert.equal(nearestIndex([0, 1], 0.5), 0); // a tie goes to the first
});

test("arrow keys step one frame and stop at the ends; other keys pass through", () => {
  assert.equal(keyStep("ArrowRight", 3, 9), 4);
  assert.equal(keyStep("ArrowUp", 8, 9), 8);
  assert.equal(keyStep("ArrowLeft", 0, 9), 0);
  assert.equal(keyStep("ArrowDown", 5, 9), 4);
  assert.equal(keyStep("Home", 5, 9), 0);
  assert.equal(keyStep("End", 0, 9), 8);
  assert.equal(keyStep("PageUp", 0, 40), 4);
  assert.equal(keyStep("PageDown", 2, 40), 0);
  assert.equal(keyStep("a", 2, 9), null);
  assert.equal(clampIndex(2.6, 3), 2);
  assert.equal(clampIndex(-1, 3), 0);
});

test("ping-pong goes back without doubling the ends (2N-2 frames)", () => {
  assert.deepEqual(frameOrder(4, false), [0, 1, 2, 3]);
  assert.deepEqual(frameOrder(4, true), [0, 1, 2, 3, 2, 1]);
  assert.deepEqual(frameOrder(2, true), [0, 1]);
  for (let n = 3; n < 12; n++) assert.equal(frameOrder(n, true).length, 2 * n - 2);
  assert.equal(cursorForIndex(frameOrder(4, true), 2), 2);
  assert.equal(cursorForIndex(frameOrder(4, true), 9), 0);
});

test("playback follows the clock: whole frames elapsed, wrapping, speed scales the frame time", () => {
  assert.equal(frameMs(1), 400);
  assert.equal(frameMs(2), 200);
  assert.equal(frameMs(0.5), 800);
  assert.equal(playbackCursor(6, 0, 0, 400), 0);
  assert.equal(playbackCursor(6, 0, 399, 400), 0);
  assert.equal(playbackCursor(6, 0, 400, 400), 1);
  assert.equal(playbackCursor(6, 4, 800, 400), 0); // 4 -> 5 -> wraps to 0
  assert.equal(playbackCursor(6, 2, 400 * 6 * 10, 400), 2); // ten full loops later: the same frame
  assert.equal(playbackCursor(6, 2, -50, 400), 2); // a clock step backwards never moves it back
});

test("ticks: both ends, plus 0 and 1 where the sweep crosses them", () => {
  assert.deepEqual(tickIndices([0, 0.25, 0.5, 0.75, 1]), [0, 4]);
  assert.deepEqual(tickIndices([-0.5, 0, 0.5, 1, 1.5]), [0, 1, 3, 4]);
  assert.deepEqual(tickIndices([1.5, 1, 0.5, 0, -0.5]), [0, 1, 3, 4]);
});
