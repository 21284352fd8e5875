// Loaded first, as a classic (blocking) script in <head>, so it sees every
// script error and Content-Security-Policy violation of the page, even
// those while the HTML is parsed; the count is kept on <html data-errors>
// for the browser test to assert the page ran clean.
(function countErrors() {
  'use strict';
  var root = document.documentElement;
  root.dataset.errors = '0';
  function count() {
    root.dataset.errors = String(Number(root.dataset.errors) + 1);
  }
  window.addEventListener('error', count, true);
  window.addEventListener('unhandledrejection', count);
  document.addEventListener('securitypolicyviolation', count);
})();
