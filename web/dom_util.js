// Small DOM helpers shared by the pack's widgets (no ComfyUI).

/** Adds a <style> with `css` to the page once (by `id`). */
export function addStyleOnce(id, css) {
  if (document.getElementById(id)) return;
  const style = document.createElement("style");
  style.id = id;
  style.textContent = css;
  document.head.append(style);
}

/** document.createElement(tag) with `props` assigned and `children` appended. */
export function el(tag, props = {}, children = []) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}
