// The Downloads view: the queue, asked for every second, with progress
// bars, rate, ETA, sources and state; pause, resume, cancel and priority
// per entry; and a box to add a download by content id or `canopy:` link.

import { every, del, get, patch, post } from './api.js';
import { field, h, setText, syncList } from './dom.js';
import { bytes, duration, percent, rate, when } from './format.js';

const STATE_TEXT = {
  queued: 'Queued',
  active: 'Downloading',
  paused: 'Paused',
  done: 'Done',
  failed: 'Failed',
  skipped: 'Skipped',
};

export default {
  title: 'Downloads',
  mount(root, ui) {
    const linkInput = h('input', {
      id: 'add-link',
      name: 'link',
      type: 'text',
      autocomplete: 'off',
      spellcheck: 'false',
      placeholder: 'canopy:… link or 64-hex content id',
      required: true,
      'data-testid': 'add-link',
    });
    const addForm = h('form', { class: 'inline-form', 'data-testid': 'add-form' },
      field('Add a download', linkInput),
      h('button', { type: 'submit', class: 'primary', 'data-testid': 'add-submit', text: 'Add' }));
    const summary = h('p', { class: 'summary', 'data-testid': 'downloads-summary', 'aria-live': 'polite' });
    const tbody = h('tbody', { 'data-testid': 'downloads' });
    const table = h('table', { class: 'list downloads' },
      h('caption', { class: 'visually-hidden', text: 'Download queue' }),
      h('thead', {}, h('tr', {},
        ['Name', 'Progress', 'Rate', 'ETA', 'Sources', 'State', 'Priority', 'Actions'].map((t) =>
          h('th', { scope: 'col', text: t, class: t === 'Actions' ? 'actions' : null })))),
      tbody);
    const clear = h('button', { type: 'button', 'data-testid': 'downloads-clear', text: 'Clear finished', hidden: true });
    root.append(h('h2', { text: 'Downloads' }), addForm, h('div', { class: 'toolbar' }, summary, clear), table);

    const rows = new Map();
    let finished = [];

    // Takes finished entries off the list; their files stay where they are.
    clear.addEventListener('click', () =>
      act(Promise.all(finished.map((d) => del(`/api/downloads/${encodeURIComponent(d.id)}`))),
        `Cleared ${finished.length} finished download${finished.length === 1 ? '' : 's'} (the files stay)`));

    async function act(promise, doneMessage) {
      try {
        await promise;
        if (doneMessage) ui.toast(doneMessage);
      } catch (err) {
        ui.toast(err.message, 'error');
      }
      await refresh();
    }

    function createRow(d) {
      const path = (suffix) => `/api/downloads/${encodeURIComponent(d.id)}${suffix}`;
      const name = h('span', { class: 'name', 'data-testid': 'download-name' });
      const detail = h('small', { class: 'detail', 'data-testid': 'download-detail' });
      const bar = h('progress', { max: 1, 'data-testid': 'download-progress' });
      const barText = h('small', { 'data-testid': 'download-progress-text' });
      const rateCell = h('td', { class: 'num', 'data-label': 'Rate', 'data-testid': 'download-rate' });
      const eta = h('td', { class: 'num', 'data-label': 'ETA', 'data-testid': 'download-eta' });
      const sources = h('td', { class: 'num', 'data-label': 'Sources', 'data-testid': 'download-sources' });
      const stateCell = h('td', { 'data-label': 'State' });
      const stateBadge = h('span', { class: 'badge', 'data-testid': 'download-state' });
      stateCell.append(stateBadge);
      const priority = h('span', { class: 'priority', 'data-testid': 'download-priority' });
      let current = d;
      const labels = new Map();
      const button = (testid, text, label, onClick) => {
        const el = h('button', { type: 'button', class: 'small', 'data-testid': testid, text, title: label, on: { click: onClick } });
        labels.set(el, label);
        return el;
      };
      const up = button('download-up', '▲', 'Raise priority of', () =>
        act(patch(path(''), { priority: current.priority + 1 })));
      const down = button('download-down', '▼', 'Lower priority of', () =>
        act(patch(path(''), { priority: current.priority - 1 })));
      const pause = button('download-pause', 'Pause', 'Pause', () => act(post(path('/pause'))));
      const resume = button('download-resume', 'Resume', 'Resume', () => act(post(path('/resume'))));
      const cancel = button('download-cancel', 'Cancel', 'Cancel', () => {
        const finished = ['done', 'skipped'].includes(current.state);
        act(del(path('')), finished ? `Removed ${current.name} from the list (the file stays)` : `Cancelled ${current.name}`);
      });
      const el = h('tr', { 'data-testid': 'download-row' },
        h('td', { class: 'name-cell', 'data-label': 'Name' }, name, detail),
        h('td', { class: 'progress-cell', 'data-label': 'Progress' }, bar, barText),
        rateCell, eta, sources, stateCell,
        h('td', { class: 'priority-cell', 'data-label': 'Priority' }, up, priority, down),
        h('td', { class: 'actions' }, pause, resume, cancel));
      return {
        el,
        update(v) {
          current = v;
          el.dataset.id = v.id;
          el.dataset.state = v.state;
          setText(name, v.name);
          for (const [el, label] of labels) el.setAttribute('aria-label', `${label} ${v.name}`);
          name.title = v.id;
          const details = v.error || (v.state === 'done' && v.path ? `${v.path} · ${when(v.finished_at)}` : '');
          setText(detail, details);
          detail.hidden = !details;
          if (v.size === null || v.size === undefined) {
            // Indeterminate (animated) only while it is looking for sources.
            if (v.state === 'active') bar.removeAttribute('value');
            else bar.value = 0;
            setText(barText, v.verified_bytes ? bytes(v.verified_bytes) : 'size not known yet');
          } else {
            bar.max = Math.max(v.size, 1);
            bar.value = v.state === 'done' ? bar.max : v.verified_bytes;
            setText(barText, v.state === 'done' ? bytes(v.size) : `${percent(v.verified_bytes, v.size)} · ${bytes(v.verified_bytes)} of ${bytes(v.size)}`);
          }
          bar.setAttribute('aria-label', `Progress of ${v.name}`);
          setText(rateCell, v.state === 'active' ? rate(v.rate) : '–');
          setText(eta, v.state === 'active' ? duration(v.eta_secs) : '–');
          setText(sources, v.state === 'active' ? `${v.active_sources} / ${v.sources}` : v.sources ? String(v.sources) : '–');
          sources.title = `${v.active_sources} sending, ${v.sources} known`;
          setText(stateBadge, STATE_TEXT[v.state] || v.state);
          stateBadge.dataset.state = v.state;
          setText(priority, v.priority);
          const finished = ['done', 'skipped'].includes(v.state);
          pause.hidden = !['queued', 'active'].includes(v.state);
          resume.hidden = !['paused', 'failed'].includes(v.state);
          setText(cancel, finished ? 'Remove' : 'Cancel');
          cancel.setAttribute('aria-label', `${finished ? 'Remove from the list' : 'Cancel'} ${v.name}`);
          up.disabled = finished;
          down.disabled = finished;
        },
      };
    }

    async function refresh() {
      const list = await get('/api/downloads');
      syncList(tbody, rows, list, (d) => d.id, createRow);
      const count = (s) => list.filter((d) => d.state === s).length;
      finished = list.filter((d) => d.state === 'done' || d.state === 'skipped');
      clear.hidden = finished.length === 0;
      setText(summary, list.length
        ? `${list.length} in the queue: ${count('active')} downloading, ${count('queued')} waiting, ${count('paused')} paused, ${count('done')} done${count('failed') ? `, ${count('failed')} failed` : ''}.`
        : 'The queue is empty. Search for something, or paste a canopy: link above.');
    }

    addForm.addEventListener('submit', async (event) => {
      event.preventDefault();
      const text = linkInput.value.trim();
      if (!text) return;
      const body = /^[0-9a-fA-F]{64}$/.test(text) ? { id: text.toLowerCase() } : { link: text };
      try {
        const added = await post('/api/downloads', body);
        linkInput.value = '';
        linkInput.removeAttribute('aria-invalid');
        ui.toast(`Queued ${added.name}`);
      } catch (err) {
        linkInput.setAttribute('aria-invalid', 'true');
        ui.toast(err.message, 'error');
      }
      await refresh().catch(() => {});
    });

    return every(1000, refresh);
  },
};
