// The control API as the UI calls it: same origin, the token travels in the
// HttpOnly cookie the server set at `/?token=…`, so requests carry no
// secret of their own. Every failure becomes an ApiError with the daemon's
// message and the field it names; 401 and "no answer" also raise the
// page-wide banners (see app.js).

/** A request the daemon refused or could not answer. */
export class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field ?? null;
  }
}

/** Tells the page whether the daemon answered and whether we are signed in. */
function report(state) {
  window.dispatchEvent(new CustomEvent('canopy:connection', { detail: state }));
}

/** Calls `METHOD path` with an optional JSON body; resolves to the JSON answer (null for 204). */
export async function call(method, path, body) {
  const init = { method, headers: { Accept: 'application/json' }, credentials: 'same-origin' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    report('offline');
    throw new ApiError(0, 'the leaf does not answer', null);
  }
  if (response.status === 401) {
    report('unauthorized');
    throw new ApiError(401, 'not signed in: open the URL the leaf printed at start-up', null);
  }
  report('ok');
  if (response.status === 204) return null;
  let payload = null;
  const text = await response.text();
  if (text) {
    try {
      payload = JSON.parse(text);
    } catch {
      payload = null;
    }
  }
  if (!response.ok) {
    const message = payload && typeof payload.error === 'string' ? payload.error : `HTTP ${response.status}`;
    throw new ApiError(response.status, message, payload ? payload.field : null);
  }
  return payload;
}

export const get = (path) => call('GET', path);
export const post = (path, body) => call('POST', path, body);
export const patch = (path, body) => call('PATCH', path, body);
export const del = (path) => call('DELETE', path);

/**
 * Runs `task` now and then every `ms` after it settles (never two at once),
 * until the returned function is called.
 */
export function every(ms, task) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    try {
      await task();
    } catch (err) {
      if (!(err instanceof ApiError)) console.error(err);
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
