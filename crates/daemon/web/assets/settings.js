// The Settings view: the settings that change while the leaf runs (rate
// limits, upload slots, downloads at once), saved with PATCH /api/settings
// (only the fields that changed). Rates are typed in KiB/s, sent in bytes/s.

import { ApiError, get, patch } from './api.js';
import { field, h } from './dom.js';

const FIELDS = [
  { key: 'download_rate_limit', label: 'Download limit (KiB/s, 0 = unlimited)', scale: 1024, min: 0 },
  { key: 'upload_rate_limit', label: 'Upload limit (KiB/s, 0 = unlimited)', scale: 1024, min: 0 },
  { key: 'upload_slots', label: 'Upload slots (uploads at once)', scale: 1, min: 1, max: 1000 },
  { key: 'max_active_downloads', label: 'Downloads at once', scale: 1, min: 1, max: 100 },
];

export default {
  title: 'Settings',
  mount(root, ui) {
    const inputs = {};
    const errors = {};
    const form = h('form', { class: 'settings', 'data-testid': 'settings-form', 'aria-busy': 'true' });
    for (const f of FIELDS) {
      const id = `setting-${f.key.replaceAll('_', '-')}`;
      inputs[f.key] = h('input', { id, name: f.key, type: 'number', inputmode: 'numeric', min: f.min, max: f.max, step: 1, required: true, 'data-testid': id });
      errors[f.key] = h('small', { class: 'error', id: `${id}-error`, role: 'alert', hidden: true });
      form.append(field(f.label, inputs[f.key]), errors[f.key]);
    }
    const save = h('button', { type: 'submit', class: 'primary', 'data-testid': 'settings-save', text: 'Save' });
    form.append(h('div', { class: 'form-actions' }, save));
    root.append(h('h2', { text: 'Settings' }), form);

    let saved = null;
    function show(settings) {
      saved = settings;
      for (const f of FIELDS) {
        inputs[f.key].value = String(Math.round(settings[f.key] / f.scale));
        inputs[f.key].removeAttribute('aria-invalid');
        errors[f.key].hidden = true;
      }
      form.setAttribute('aria-busy', 'false');
    }

    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      if (!saved) return;
      const body = {};
      for (const f of FIELDS) {
        const el = inputs[f.key];
        const value = Number(el.value) * f.scale;
        if (!Number.isInteger(value) || el.value.trim() === '') {
          el.setAttribute('aria-invalid', 'true');
          errors[f.key].textContent = 'a whole number';
          errors[f.key].hidden = false;
          el.focus();
          return;
        }
        // Only what the person changed: a limit of 1500 B/s shows as 1 KiB/s
        // and must not be rewritten to 1024 by an unrelated save.
        if (Number(el.value) !== Math.round(saved[f.key] / f.scale)) body[f.key] = value;
      }
      if (Object.keys(body).length === 0) {
        ui.toast('Nothing changed.');
        return;
      }
      save.disabled = true;
      try {
        show(await patch('/api/settings', body));
        ui.toast('Settings saved.');
      } catch (err) {
        const key = err instanceof ApiError && err.field in inputs ? err.field : null;
        if (key) {
          inputs[key].setAttribute('aria-invalid', 'true');
          errors[key].textContent = err.message;
          errors[key].hidden = false;
          inputs[key].focus();
        }
        ui.toast(`Not saved: ${err.message}`, 'error');
      } finally {
        save.disabled = false;
      }
    });

    get('/api/settings').then(show, (err) => ui.toast(err.message, 'error'));
    return null;
  },
};
