// DOM helpers: every element is built with these, and every piece of text a
// peer or the daemon sent goes in through textContent (never innerHTML), so a
// file named "<img onerror=...>" is only ever a name.

/**
 * Builds an element. `attrs` keys: `class`, `text`, `dataset` (object),
 * `on` (object of event handlers), anything else as an attribute (skipped
 * when null/undefined/false; `true` sets an empty attribute).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key === 'on') {
      for (const [event, handler] of Object.entries(value)) el.addEventListener(event, handler);
    } else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Sets an element's text only when it changed (keeps selection and screen readers calm). */
export function setText(el, text) {
  const value = String(text);
  if (el.textContent !== value) el.textContent = value;
}

/**
 * Keeps a container's children in step with `items`, one child per key:
 * existing children are updated in place (so focus and hover survive the
 * once-a-second refresh), new ones created, gone ones removed, order kept.
 * `create(item)` returns `{ el, update(item) }`.
 */
export function syncList(container, rows, items, key, create) {
  const seen = new Set();
  let previous = null;
  for (const item of items) {
    const k = key(item);
    seen.add(k);
    let row = rows.get(k);
    if (!row) {
      row = create(item);
      rows.set(k, row);
    }
    row.update(item);
    const expected = previous ? previous.nextSibling : container.firstChild;
    if (expected !== row.el) container.insertBefore(row.el, expected);
    previous = row.el;
  }
  for (const [k, row] of rows) {
    if (!seen.has(k)) {
      row.el.remove();
      rows.delete(k);
    }
  }
}

/** A labelled form field: `<div class="field"><label for=id>…</label>control</div>`. */
export function field(label, control, hint) {
  const hintEl = hint ? h('small', { class: 'hint', id: `${control.id}-hint`, text: hint }) : null;
  if (hintEl) control.setAttribute('aria-describedby', hintEl.id);
  return h('div', { class: 'field' }, h('label', { for: control.id, text: label }), control, hintEl);
}
