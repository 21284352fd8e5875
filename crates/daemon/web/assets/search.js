// The Search view: words (or a content id) and filters, results streamed
// live over Server-Sent Events (`/api/searches/{id}/events`), one row per
// distinct content with its size, sources and other names, and a Download
// button that queues it by its `canopy:` link.

import { ApiError, del, get, post } from './api.js';
import { field, h, setText, syncList } from './dom.js';
import { bytes, parseSize } from './format.js';

const KINDS = ['audio', 'video', 'image', 'document', 'archive', 'software'];
const SORTS = [
  ['sources', 'Most sources'],
  ['size', 'Largest'],
  ['name', 'Name'],
];
const HEX64 = /^[0-9a-fA-F]{64}$/;

// Kept across view switches: the last search and what it found.
const state = {
  form: { query: '', min: '', max: '', ext: '', kind: '', sort: 'sources' },
  search: null, // the latest SearchView
  queued: new Set(), // content ids queued from this page
};

const compare = {
  sources: (a, b) => b.sources - a.sources || b.size - a.size || a.name.localeCompare(b.name),
  size: (a, b) => b.size - a.size || b.sources - a.sources,
  name: (a, b) => a.name.localeCompare(b.name, undefined, { sensitivity: 'base' }) || b.sources - a.sources,
};

export default {
  title: 'Search',
  mount(root, ui) {
    const input = (id, attrs) => h('input', { id, name: id, ...attrs });
    const query = input('search-query', {
      type: 'search',
      autocomplete: 'off',
      placeholder: 'words, or a content id',
      required: true,
      'data-testid': 'search-query',
      value: state.form.query,
    });
    const minSize = input('search-min-size', { type: 'text', inputmode: 'decimal', placeholder: 'e.g. 1M', 'data-testid': 'search-min-size' });
    const maxSize = input('search-max-size', { type: 'text', inputmode: 'decimal', placeholder: 'e.g. 4G', 'data-testid': 'search-max-size' });
    const ext = input('search-extensions', { type: 'text', autocomplete: 'off', placeholder: 'e.g. mp3, flac', 'data-testid': 'search-extensions' });
    const kind = h('select', { id: 'search-kind', name: 'kind', 'data-testid': 'search-kind' },
      h('option', { value: '', text: 'Any' }),
      KINDS.map((k) => h('option', { value: k, text: k[0].toUpperCase() + k.slice(1) })));
    const sort = h('select', { id: 'search-sort', name: 'sort', 'data-testid': 'search-sort' },
      SORTS.map(([value, text]) => h('option', { value, text })));
    minSize.value = state.form.min;
    maxSize.value = state.form.max;
    ext.value = state.form.ext;
    kind.value = state.form.kind;
    sort.value = state.form.sort;
    const inputs = { query, id: query, min_size: minSize, max_size: maxSize, extensions: ext, kind, sort };

    const formError = h('p', { class: 'error', id: 'search-error', 'data-testid': 'search-error', role: 'alert', hidden: true });
    const submit = h('button', { type: 'submit', class: 'primary', 'data-testid': 'search-submit', text: 'Search' });
    const form = h('form', { class: 'search-form', 'data-testid': 'search-form', role: 'search', 'aria-label': 'Search the network' },
      h('div', { class: 'search-line' },
        h('label', { for: 'search-query', class: 'visually-hidden', text: 'Search for' }), query, submit),
      h('fieldset', { class: 'filters' },
        h('legend', { text: 'Filters' }),
        field('Min size', minSize),
        field('Max size', maxSize),
        field('Extensions', ext),
        field('Kind', kind),
        field('Sort by', sort)),
      formError);

    const statusLine = h('p', { class: 'search-status', id: 'search-status', 'data-testid': 'search-status', 'aria-live': 'polite' });
    const tbody = h('tbody', { 'data-testid': 'results' });
    const table = h('table', { class: 'list results', 'aria-describedby': 'search-status' },
      h('caption', { class: 'visually-hidden', text: 'Search results' }),
      h('thead', {}, h('tr', {},
        h('th', { scope: 'col', text: 'Name' }),
        h('th', { scope: 'col', class: 'num', text: 'Size' }),
        h('th', { scope: 'col', class: 'num', text: 'Sources' }),
        h('th', { scope: 'col', text: 'Actions', class: 'actions' }))),
      tbody);
    root.append(h('h2', { text: 'Search' }), form, statusLine, table);

    const rows = new Map();
    let events = null;
    let pollStop = null;
    let stopped = false;

    function clearErrors() {
      formError.hidden = true;
      for (const el of Object.values(inputs)) el.removeAttribute('aria-invalid');
    }
    function showError(message, fieldName) {
      formError.textContent = message;
      formError.hidden = false;
      const el = fieldName && inputs[fieldName];
      if (el) {
        el.setAttribute('aria-invalid', 'true');
        el.focus();
      }
    }

    async function download(result, button) {
      button.disabled = true;
      try {
        const added = await post('/api/downloads', { link: result.link });
        state.queued.add(result.content_id);
        setText(button, 'Queued');
        ui.toast(`Queued ${added.name || result.name}`);
      } catch (err) {
        button.disabled = false;
        ui.toast(`Could not queue ${result.name}: ${err.message}`, 'error');
      }
    }

    function createRow(result) {
      const name = h('span', { class: 'name' });
      const variants = h('span', { class: 'variants', 'data-testid': 'result-variants' });
      const size = h('td', { class: 'num', 'data-label': 'Size', 'data-testid': 'result-size' });
      const sources = h('td', { class: 'num', 'data-label': 'Sources', 'data-testid': 'result-sources' });
      const button = h('button', { type: 'button', 'data-testid': 'result-download', text: 'Download' });
      let current = result;
      button.addEventListener('click', () => download(current, button));
      const el = h('tr', { 'data-testid': 'result-row' },
        h('td', { class: 'name-cell', 'data-label': 'Name' }, name, variants),
        size, sources,
        h('td', { class: 'actions' }, button));
      return {
        el,
        update(r) {
          current = r;
          el.dataset.contentId = r.content_id;
          setText(name, r.name);
          name.title = `${r.name}\n${r.content_id}`;
          const others = r.names.filter((n) => n !== r.name);
          if (others.length) {
            setText(variants, `+${others.length} name${others.length === 1 ? '' : 's'}`);
            variants.title = others.join('\n');
            variants.setAttribute('aria-label', `also named: ${others.join(', ')}`);
            variants.hidden = false;
          } else variants.hidden = true;
          setText(size, bytes(r.size));
          size.title = `${r.size} bytes`;
          setText(sources, r.firewalled_sources ? `${r.sources} (${r.firewalled_sources} firewalled)` : r.sources);
          button.setAttribute('aria-label', `Download ${r.name}`);
          if (state.queued.has(r.content_id)) {
            button.disabled = true;
            setText(button, 'Queued');
          } else if (button.textContent === 'Queued') {
            button.disabled = false;
            setText(button, 'Download');
          }
        },
      };
    }

    function render() {
      const s = state.search;
      if (!s) {
        setText(statusLine, 'Type words that appear in a file name.');
        syncList(tbody, rows, [], (r) => r.content_id, createRow);
        return;
      }
      const results = [...s.results].sort(compare[sort.value] || compare.sources);
      syncList(tbody, rows, results, (r) => r.content_id, createRow);
      const count = `${results.length} result${results.length === 1 ? '' : 's'} from ${s.hits} hit${s.hits === 1 ? '' : 's'}`;
      statusLine.dataset.done = String(s.done);
      if (!s.done) setText(statusLine, `Searching for “${s.query}”… ${count}`);
      else if (results.length === 0) setText(statusLine, `Nothing found for “${s.query}” (${(s.elapsed_ms / 1000).toFixed(1)} s). Peers answer only for files they share: try fewer words.`);
      else setText(statusLine, `${count} for “${s.query}” in ${(s.elapsed_ms / 1000).toFixed(1)} s.`);
    }

    function stopFollowing() {
      if (events) events.close();
      events = null;
      if (pollStop) pollStop();
      pollStop = null;
    }

    // Follows a search live; if the stream breaks before the end, asks
    // for the search twice a second instead until it is done.
    function follow(id) {
      stopFollowing();
      const apply = (data) => {
        if (stopped || !state.search || state.search.id !== id) return;
        state.search = data;
        render();
      };
      events = new EventSource(`/api/searches/${encodeURIComponent(id)}/events`);
      events.addEventListener('update', (e) => apply(JSON.parse(e.data)));
      events.addEventListener('done', (e) => {
        apply(JSON.parse(e.data));
        stopFollowing();
      });
      events.addEventListener('error', () => {
        stopFollowing();
        if (state.search && state.search.id === id && !state.search.done) {
          const poll = async () => {
            if (stopped) return;
            try {
              apply(await get(`/api/searches/${encodeURIComponent(id)}`));
            } catch (err) {
              if (err instanceof ApiError && err.status === 404 && state.search && state.search.id === id) {
                state.search = { ...state.search, done: true };
                render();
              }
              return;
            }
            if (state.search && state.search.id === id && !state.search.done) pollStop = delay(poll, 500);
          };
          poll();
        }
      });
    }

    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      clearErrors();
      const words = query.value.trim();
      const spec = {};
      try {
        if (!words) throw Object.assign(new Error('Type something to search for.'), { field: 'query' });
        if (HEX64.test(words)) spec.id = words.toLowerCase();
        else spec.query = words;
        for (const [el, key] of [[minSize, 'min_size'], [maxSize, 'max_size']]) {
          try {
            const n = parseSize(el.value);
            if (n !== null) spec[key] = n;
          } catch (err) {
            throw Object.assign(new Error(`${el === minSize ? 'Min' : 'Max'} size: ${err.message}`), { field: key });
          }
        }
        const extensions = ext.value.split(/[\s,]+/).map((e) => e.replace(/^\./, '')).filter(Boolean);
        if (extensions.length) spec.extensions = extensions;
        if (kind.value) spec.kind = kind.value;
        spec.sort = sort.value;
      } catch (err) {
        showError(err.message, err.field);
        return;
      }
      state.form = { query: query.value, min: minSize.value, max: maxSize.value, ext: ext.value, kind: kind.value, sort: sort.value };
      const previous = state.search;
      submit.disabled = true;
      try {
        const started = await post('/api/searches', spec);
        if (previous && !previous.done) del(`/api/searches/${encodeURIComponent(previous.id)}`).catch(() => {});
        state.search = started;
        render();
        if (!started.done) follow(started.id);
      } catch (err) {
        showError(err.message, err.field);
      } finally {
        submit.disabled = false;
      }
    });
    sort.addEventListener('change', () => {
      state.form.sort = sort.value;
      render();
    });

    render();
    // Rows already in the queue say so instead of offering Download again.
    get('/api/downloads').then((list) => {
      state.queued = new Set(list.map((d) => d.id));
      if (!stopped) render();
    }, () => {});
    if (state.search && !state.search.done) follow(state.search.id);
    if (!state.search) query.focus();
    return () => {
      stopped = true;
      stopFollowing();
    };
  },
};

/** setTimeout as a cancel function. */
function delay(fn, ms) {
  const timer = setTimeout(fn, ms);
  return () => clearTimeout(timer);
}
