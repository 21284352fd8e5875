// The Shares view: the shared folders with their file counts and sizes,
// adding and removing a folder, and a rescan.

import { every, get, post } from './api.js';
import { field, h, setText, syncList } from './dom.js';
import { bytes } from './format.js';

export default {
  title: 'Shares',
  mount(root, ui) {
    const pathInput = h('input', {
      id: 'share-path',
      name: 'path',
      type: 'text',
      autocomplete: 'off',
      spellcheck: 'false',
      placeholder: '/home/me/Music',
      required: true,
      'data-testid': 'share-path',
    });
    const addForm = h('form', { class: 'inline-form', 'data-testid': 'share-form' },
      field('Share a folder (absolute path on the leaf\u2019s machine)', pathInput),
      h('button', { type: 'submit', class: 'primary', 'data-testid': 'share-add', text: 'Share' }));
    const rescan = h('button', { type: 'button', 'data-testid': 'share-rescan', text: 'Rescan now' });
    const summary = h('p', { class: 'summary', 'data-testid': 'shares-summary', 'aria-live': 'polite' });
    const downloadsDir = h('p', { class: 'hint', 'data-testid': 'shares-downloads-dir' });
    const tbody = h('tbody', { 'data-testid': 'shares' });
    root.append(
      h('h2', { text: 'Shares' }),
      addForm,
      h('div', { class: 'toolbar' }, summary, rescan),
      h('table', { class: 'list shares' },
        h('caption', { class: 'visually-hidden', text: 'Shared folders' }),
        h('thead', {}, h('tr', {},
          h('th', { scope: 'col', text: 'Folder' }),
          h('th', { scope: 'col', class: 'num', text: 'Files' }),
          h('th', { scope: 'col', class: 'num', text: 'Size' }),
          h('th', { scope: 'col', class: 'actions', text: 'Actions' }))),
        tbody),
      downloadsDir);
    const rows = new Map();

    function render(view) {
      syncList(tbody, rows, view.folders, (f) => f.path, createRow);
      const files = `${view.files} file${view.files === 1 ? '' : 's'} (${bytes(view.bytes)}) shared`;
      setText(summary, view.scanning ? `${files}; scanning…` : `${files}.`);
      summary.dataset.scanning = String(view.scanning);
      setText(downloadsDir, `Downloads are saved in ${view.downloads_dir}.`);
    }

    async function change(promise, message) {
      try {
        render(await promise);
        if (message) ui.toast(message);
        return true;
      } catch (err) {
        ui.toast(err.message, 'error');
        return false;
      }
    }

    function createRow(folder) {
      const path = h('td', { class: 'name-cell', 'data-label': 'Folder', 'data-testid': 'share-folder' });
      const files = h('td', { class: 'num', 'data-label': 'Files', 'data-testid': 'share-files' });
      const size = h('td', { class: 'num', 'data-label': 'Size', 'data-testid': 'share-bytes' });
      const remove = h('button', {
        type: 'button',
        class: 'small',
        'data-testid': 'share-remove',
        text: 'Stop sharing',
        'aria-label': `Stop sharing ${folder.path}`,
        on: { click: () => change(post('/api/shares/remove', { path: folder.path }), `No longer sharing ${folder.path}`) },
      });
      return {
        el: h('tr', { 'data-testid': 'share-row', dataset: { path: folder.path } }, path, files, size, h('td', { class: 'actions' }, remove)),
        update(f) {
          setText(path, f.path);
          setText(files, f.files);
          setText(size, bytes(f.bytes));
        },
      };
    }

    addForm.addEventListener('submit', async (event) => {
      event.preventDefault();
      const path = pathInput.value.trim();
      if (!path) return;
      if (await change(post('/api/shares', { path }), `Sharing ${path}`)) {
        pathInput.value = '';
        pathInput.removeAttribute('aria-invalid');
      } else pathInput.setAttribute('aria-invalid', 'true');
    });
    rescan.addEventListener('click', () => change(post('/api/shares/rescan'), 'Rescanning'));

    return every(2000, async () => render(await get('/api/shares')));
  },
};
