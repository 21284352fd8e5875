// The page: a hash router over one module per view, the header's live
// rates, the sign-in/offline banners and the toast. A view module exports
// `{ title, mount(root, ui) }`; mount returns the function that stops it
// (closes its event stream, stops its polling) when another view opens.

import { every, get } from './api.js';
import { rate } from './format.js';
import search from './search.js';
import downloads from './downloads.js';
import uploads from './uploads.js';
import shares from './shares.js';
import status from './status.js';
import settings from './settings.js';

const VIEWS = { search, downloads, uploads, shares, status, settings };
const DEFAULT_VIEW = 'search';

const main = document.getElementById('main');
const toastEl = document.getElementById('toast');
let toastTimer = null;

/** What views use to talk to the person. */
const ui = {
  /** A short message in the corner; `kind` is 'info' or 'error'. */
  toast(message, kind = 'info') {
    toastEl.textContent = message;
    toastEl.dataset.kind = kind;
    toastEl.classList.add('shown');
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => toastEl.classList.remove('shown'), kind === 'error' ? 8000 : 4000);
  },
  /** Opens another view. */
  go(view) {
    window.location.hash = `#/${view}`;
  },
};

let stopView = null;

function currentView() {
  const name = window.location.hash.replace(/^#\/?/, '').split('?')[0];
  return name in VIEWS ? name : DEFAULT_VIEW;
}

function show(focus) {
  const name = currentView();
  if (stopView) stopView();
  main.replaceChildren();
  main.dataset.view = name;
  for (const link of document.querySelectorAll('#tabs a')) {
    if (link.dataset.view === name) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  document.title = `${VIEWS[name].title} · Canopy`;
  stopView = VIEWS[name].mount(main, ui) || null;
  if (focus) main.focus({ preventScroll: true });
}

window.addEventListener('hashchange', () => show(true));

window.addEventListener('canopy:connection', (event) => {
  document.getElementById('auth-banner').hidden = event.detail !== 'unauthorized';
  document.getElementById('offline-banner').hidden = event.detail !== 'offline';
});

// The header: transfer rates and supernodes, every two seconds.
const ratesEl = document.getElementById('rates');
every(2000, async () => {
  const s = await get('/api/status');
  const t = s.totals;
  ratesEl.textContent = `↓ ${rate(t.download_rate)}  ↑ ${rate(t.upload_rate)}  · ${s.supernodes.length} supernode${s.supernodes.length === 1 ? '' : 's'}`;
});

show(false);
