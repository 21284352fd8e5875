// The Uploads view: what other peers are fetching from us right now, asked
// for every second.

import { every, get } from './api.js';
import { h, setText, syncList } from './dom.js';
import { bytes, duration, percent, rate } from './format.js';

export default {
  title: 'Uploads',
  mount(root) {
    const summary = h('p', { class: 'summary', 'data-testid': 'uploads-summary', 'aria-live': 'polite' });
    const tbody = h('tbody', { 'data-testid': 'uploads' });
    root.append(
      h('h2', { text: 'Uploads' }),
      summary,
      h('table', { class: 'list uploads' },
        h('caption', { class: 'visually-hidden', text: 'Uploads running now' }),
        h('thead', {}, h('tr', {}, ['Peer', 'File', 'Sent', 'Rate', 'For'].map((t) => h('th', { scope: 'col', text: t })))),
        tbody));
    const rows = new Map();

    function createRow() {
      const peer = h('td', { 'data-label': 'Peer', 'data-testid': 'upload-peer' });
      const file = h('td', { class: 'name-cell', 'data-label': 'File', 'data-testid': 'upload-file' });
      const bar = h('progress', { max: 1 });
      const sentText = h('small', {});
      const sent = h('td', { class: 'progress-cell', 'data-label': 'Sent', 'data-testid': 'upload-bytes' }, bar, sentText);
      const rateCell = h('td', { class: 'num', 'data-label': 'Rate', 'data-testid': 'upload-rate' });
      const age = h('td', { class: 'num', 'data-label': 'For' });
      return {
        el: h('tr', { 'data-testid': 'upload-row' }, peer, file, sent, rateCell, age),
        update(u) {
          setText(peer, u.peer);
          setText(file, u.name);
          file.title = u.content_id;
          bar.max = Math.max(u.length, 1);
          bar.value = u.bytes;
          bar.setAttribute('aria-label', `Sent of ${u.name} to ${u.peer}`);
          setText(sentText, `${percent(u.bytes, u.length)} · ${bytes(u.bytes)} of ${bytes(u.length)}`);
          setText(rateCell, rate(u.rate));
          setText(age, duration(Date.now() / 1000 - u.started_at));
        },
      };
    }

    return every(1000, async () => {
      const list = await get('/api/uploads');
      syncList(tbody, rows, list, (u) => `${u.peer} ${u.content_id} ${u.started_at}`, createRow);
      setText(summary, list.length ? `${list.length} upload${list.length === 1 ? '' : 's'} running.` : 'No uploads right now.');
    });
  },
};
