// The Status view: who we are, where we are attached, whether others can
// reach us, who is on the LAN, what we share and what has moved since start.

import { every, get } from './api.js';
import { h, setText } from './dom.js';
import { bytes, rate } from './format.js';

const REACHABLE = {
  yes: 'yes: a supernode connected back to us',
  no: 'no: others reach us by push',
  unknown: 'not known yet',
};

const NAT = {
  none: 'none: supernodes see our own address',
  endpoint_independent: 'endpoint-independent (one external port for everyone)',
  endpoint_independent_port_preserving: 'endpoint-independent, keeps our port',
  endpoint_dependent: 'endpoint-dependent (symmetric: a port per peer)',
  unknown: 'not known yet',
};

export default {
  title: 'Status',
  mount(root) {
    const items = {};
    const dl = h('dl', { class: 'facts', 'data-testid': 'status' });
    const add = (key, label) => {
      items[key] = h('dd', { 'data-testid': `status-${key}`, class: key === 'node-id' ? 'mono' : null });
      dl.append(h('dt', { text: label }), items[key]);
    };
    add('node-id', 'Node id');
    add('version', 'Version');
    add('listen', 'Serving on');
    add('observed', 'Seen by supernodes as');
    add('reachable', 'Reachable from outside');
    add('nat', 'NAT');
    add('public', 'Public address');
    add('supernodes', 'Supernodes');
    add('lan', 'On the LAN');
    add('shared', 'Shared');
    add('downloads-dir', 'Downloads folder');
    add('uploaded', 'Uploaded');
    add('downloaded', 'Downloaded');
    add('transfers', 'Transfers');
    root.append(h('h2', { text: 'Status' }), dl);

    return every(2000, async () => {
      const s = await get('/api/status');
      const t = s.totals;
      setText(items['node-id'], s.node_id);
      setText(items.version, s.version);
      setText(items.listen, s.listen || 'not serving (download only)');
      setText(items.observed, s.observed_addr || '–');
      const reach = s.reachability || { reachable: 'unknown', nat: 'unknown', public_addrs: [] };
      setText(items.reachable, REACHABLE[reach.reachable] || reach.reachable);
      setText(items.nat, NAT[reach.nat] || reach.nat);
      setText(items.public, reach.public_addrs.length
        ? reach.public_addrs.map((a) => `${a.ip} (${a.confirmed ? 'confirmed by two supernodes' : 'one supernode says'})`).join(', ')
        : '–');
      const list = s.supernodes.length
        ? h('ul', {}, s.supernodes.map((addr) => h('li', { text: addr })))
        : h('span', { text: 'none yet: looking for one…' });
      items.supernodes.replaceChildren(list);
      const lan = s.lan_peers || [];
      items.lan.replaceChildren(lan.length
        ? h('ul', {}, lan.map((p) => h('li', { text: `${p.addr} (${p.role})` })))
        : h('span', { text: 'nobody heard' }));
      setText(items.shared, `${s.shared_files} file${s.shared_files === 1 ? '' : 's'}, ${bytes(s.shared_bytes)}`);
      setText(items['downloads-dir'], s.downloads_dir);
      setText(items.uploaded, `${bytes(t.uploaded_bytes)} (now ${rate(t.upload_rate)})`);
      setText(items.downloaded, `${bytes(t.downloaded_bytes)} (now ${rate(t.download_rate)})`);
      setText(items.transfers, `${t.uploads_active} uploading, ${t.downloads_active} downloading, ${t.downloads_queued} waiting`);
    });
  },
};
