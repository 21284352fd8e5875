// Numbers for people: sizes, rates, durations, and sizes typed by people.

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** 1536 -> "1.5 KiB". */
export function bytes(n) {
  if (n === null || n === undefined) return '?';
  let value = Number(n);
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const digits = unit === 0 || value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return `${value.toFixed(digits)} ${UNITS[unit]}`;
}

/** Bytes a second -> "1.5 MiB/s" ("–" when idle). */
export function rate(n) {
  return n ? `${bytes(n)}/s` : '–';
}

/** Seconds -> "1 h 02 min", "3 min 05 s", "12 s" ("–" when unknown). */
export function duration(secs) {
  if (secs === null || secs === undefined) return '–';
  const s = Math.max(0, Math.round(secs));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
  const hours = Math.floor(s / 3600);
  if (hours >= 48) return `${Math.floor(hours / 24)} d`;
  return `${hours} h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')} min`;
}

/** Done fraction as "42%" (or "" when the size is unknown). */
export function percent(done, total) {
  if (!total) return '';
  return `${Math.floor((100 * done) / total)}%`;
}

const SUFFIX = { '': 1, b: 1, k: 1024, kb: 1024, kib: 1024, m: 1024 ** 2, mb: 1024 ** 2, mib: 1024 ** 2, g: 1024 ** 3, gb: 1024 ** 3, gib: 1024 ** 3, t: 1024 ** 4, tb: 1024 ** 4, tib: 1024 ** 4 };

/**
 * "700M", "1.5 GiB", "4096" -> bytes; "" -> null; anything else throws
 * (the caller shows the message next to the field).
 */
export function parseSize(text) {
  const trimmed = text.trim().toLowerCase();
  if (trimmed === '') return null;
  const match = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/.exec(trimmed);
  if (!match || !(match[2] in SUFFIX)) throw new Error('a size such as 700M, 1.5G or 4096');
  return Math.round(Number(match[1]) * SUFFIX[match[2]]);
}

/** Unix seconds -> local date and time. */
export function when(unixSecs) {
  if (!unixSecs) return '–';
  return new Date(unixSecs * 1000).toLocaleString();
}
