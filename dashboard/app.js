// The dashboard: polls the head's REST API every 2 s (history and events incrementally, with
// ?since), keeps what it got on window.serveDashboard and redraws the page the hash names:
//   #/  #/events  #/app/APP  #/deployment/APP/DEP  #/node/NODE
'use strict';

(function (SD) {
        const {h, fill, table, badge, datetime, clock, ago, bytes, num, link, charts} = SD;
        const POLL_MS = 2000, FETCH_TIMEOUT_MS = 4000, MAX_EVENTS = 5000, TOKEN_KEY = 'serve.apiToken';

        const state = SD.state = window.serveDashboard = {
                apps: null, nodes: null, history: null, events: [], eventsNext: null,
                reachable: null, unreachableSince: null, updatedAt: null, missing: {}, charts: {},
        };

        // ---- fetching ------------------------------------------------------------------------
        async function getJSON(path) {
                const ctl = new AbortController();
                const timer = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
                try {
                        const r = await fetch(path, {signal: ctl.signal, cache: 'no-store'}).catch(e => {
                                throw new Error(ctl.signal.aborted ? `no answer within ${FETCH_TIMEOUT_MS / 1000} s` : e.message);
                        });
                        if (!r.ok) {
                                const e = new Error(`${path}: HTTP ${r.status}`);
                                e.status = r.status;
                                throw e;
                        }
                        return await r.json();
                } finally {
                        clearTimeout(timer);
                }
        }

        // Appends the points after `since`; a key or metric seen first now gets nulls for the
        // points before it, one gone quiet gets nulls; keeps at most `capacity` points.
        function mergeHistory(old, inc) {
                if (!old || !old.t.length)
                        return {...inc, series: inc.series || {}};
                const last = old.t[old.t.length - 1];
                const from = inc.t.findIndex(x => x > last); // after a head restart, skip what we have
                const add = from < 0 ? 0 : inc.t.length - from;
                const n0 = old.t.length;
                old.interval_s = inc.interval_s;
                old.capacity = inc.capacity;
                old.memory_bytes = inc.memory_bytes;
                if (!add)
                        return old;
                old.t.push(...inc.t.slice(from));
                const scopes = new Set([...Object.keys(old.series), ...Object.keys(inc.series || {})]);
                for (const scope of scopes) {
                        const os = old.series[scope] ??= {}, is = (inc.series || {})[scope] || {};
                        for (const key of new Set([...Object.keys(os), ...Object.keys(is)])) {
                                const ok = os[key] ??= {}, ik = is[key] || {};
                                for (const metric of new Set([...Object.keys(ok), ...Object.keys(ik)])) {
                                        const a = ok[metric] ??= new Array(n0).fill(null);
                                        const b = ik[metric];
                                        a.push(...(b ? b.slice(from) : new Array(add).fill(null)));
                                }
                        }
                }
                const drop = old.t.length - (old.capacity || 720);
                if (drop > 0) {
                        old.t.splice(0, drop);
                        for (const scope of Object.values(old.series))
                                for (const [key, metrics] of Object.entries(scope)) {
                                        let any = false;
                                        for (const a of Object.values(metrics)) {
                                                a.splice(0, drop);
                                                any = any || a.some(v => v !== null);
                                        }
                                        if (!any)
                                                delete scope[key];
                                }
                }
                return old;
        }

        function mergeEvents(got) {
                if (state.eventsNext !== null && got.next < state.eventsNext) {
                        // The head restarted and counts from 1 again: start over, and fetch
                        // all it has at the next poll (this answer skipped those up to since).
                        state.events = [];
                        state.eventsNext = null;
                        return;
                }
                const lastId = state.events.length ? state.events[state.events.length - 1].id : -Infinity;
                state.events.push(...(got.events || []).filter(e => e.id > lastId));
                if (state.events.length > MAX_EVENTS)
                        state.events.splice(0, state.events.length - MAX_EVENTS);
                state.eventsNext = got.next;
        }

        async function poll() {
                const since = state.history && state.history.t.length ? state.history.t[state.history.t.length - 1] : null;
                const [apps, nodes, hist, events] = await Promise.allSettled([
                        getJSON('/api/serve/applications/'),
                        getJSON('/api/cluster/nodes'),
                        getJSON('/api/dashboard/history' + (since !== null ? `?since=${since}` : '')),
                        getJSON('/api/dashboard/events' + (state.eventsNext !== null ? `?since=${state.eventsNext}` : '')),
                ]);
                if (apps.status === 'fulfilled' && nodes.status === 'fulfilled') {
                        state.apps = apps.value;
                        state.nodes = nodes.value.nodes || [];
                        state.reachable = true;
                        state.unreachableSince = null;
                        state.updatedAt = Date.now() / 1000;
                } else {
                        state.reachable = false;
                        state.unreachableSince ??= Date.now() / 1000;
                        state.lastError = String((apps.reason || nodes.reason || {}).message || 'no answer');
                }
                // A head without the history or events endpoints (404) still gets its tables.
                if (hist.status === 'fulfilled')
                        state.history = mergeHistory(state.history, hist.value);
                state.missing.history = hist.status === 'rejected' && hist.reason.status === 404;
                if (events.status === 'fulfilled')
                        mergeEvents(events.value);
                state.missing.events = events.status === 'rejected' && events.reason.status === 404;
                render();
        }

        async function loop() {
                try {
                        await poll();
                } catch (e) {
                        console.error('dashboard update failed', e);
                }
                setTimeout(loop, POLL_MS);
        }

        // ---- the frame: connection status, config error banner --------------------------------
        function renderFrame() {
                const cs = document.getElementById('conn-status');
                if (state.reachable === false) {
                        cs.dataset.state = 'unreachable';
                        fill(cs, `✖ head unreachable, retrying (since ${clock(state.unreachableSince)}; ${state.lastError})`);
                } else if (state.reachable) {
                        cs.dataset.state = 'ok';
                        fill(cs, `● live, updated ${clock(state.updatedAt)}`);
                }
                const ce = state.apps && state.apps.config_error;
                const banner = document.getElementById('config-error');
                banner.hidden = !ce;
                if (ce) {
                        fill(document.getElementById('config-error-message'), ce.message);
                        fill(document.getElementById('config-error-time'), `(reload at ${datetime(ce.time)})`);
                }
        }

        // ---- pieces shared by the pages --------------------------------------------------------
        function appList() { return Object.values((state.apps && state.apps.applications) || {}); }
        function depList(app) { return Object.values(app.deployments || {}); }
        function findApp(name) { return ((state.apps && state.apps.applications) || {})[name]; }
        function nodeById(id) { return (state.nodes || []).find(n => n.node_id === id); }

        function pendingText(d) {
                const p = d.pending || [];
                if (!p.length)
                        return '—';
                return p.map(x => `${x.count} pending: ${x.reason}`).join('; ');
        }
        function pendingCount(d) { return (d.pending || []).reduce((s, x) => s + (x.count || 0), 0); }
        function autoscaleText(d) {
                const a = d.autoscaling;
                if (!a)
                        return 'fixed';
                return `auto ${a.min_replicas}–${a.max_replicas}, target ${a.target_replicas}, load ${num(a.load, 2)}`;
        }

        function deploymentsTable(apps, id) {
                const rows = [];
                for (const a of apps)
                        for (const d of depList(a))
                                rows.push({attrs: {dataset: {deployment: `${a.name}/${d.name}`}}, cells: [
                                        link(`${a.name}/${d.name}`, 'deployment', a.name, d.name), badge(d.status),
                                        {cell: `${d.running_replicas ?? '?'} / ${d.target_replicas ?? '?'}`, attrs: {class: 'n', dataset: {test: 'replicas'}}},
                                        {cell: String(pendingCount(d)), attrs: {class: 'n'}},
                                        pendingText(d), autoscaleText(d), d.message || '']});
                return table(['deployment', 'status', 'running / target', 'pending', 'pending reason', 'scaling', 'message'],
                        rows, {id, class: 'grid'}, 'no deployments');
        }

        function used(n, res) {
                const total = (n.resources_total || {})[res];
                if (!total)
                        return '—';
                const avail = (n.resources_available || {})[res] ?? total;
                const fmt = res === 'memory' ? bytes : x => num(x, 2);
                return `${fmt(total - avail)} of ${fmt(total)}`;
        }

        function nodesTable(nodes, id) {
                const byName = (a, b) => String(a.node_id).localeCompare(String(b.node_id), 'en', {numeric: true});
                const rows = [...nodes].sort(byName).map(n => ({attrs: {dataset: {node: n.node_id}}, cells: [
                        link(n.node_id, 'node', n.node_id),
                        h('span', null, badge(n.state), n.is_head_node ? ' (head)' : '',
                                n.state === 'ALIVE' && n.connected === false ? ' ⚠ not connected' : ''),
                        n.group ?? 'default',
                        {cell: used(n, 'CPU'), attrs: {class: 'n'}}, {cell: used(n, 'memory'), attrs: {class: 'n'}},
                        {cell: used(n, 'GPU'), attrs: {class: 'n'}}, {cell: num(n.replicas), attrs: {class: 'n'}},
                        ago(n.last_heartbeat_s_ago)]}));
                return table(['node', 'state', 'group', 'CPU used', 'memory used', 'GPU used', 'replicas', 'heartbeat'],
                        rows, {id, class: 'grid'}, 'no nodes have joined');
        }

        const EVENT_ICONS = {deploy: '▶', reload: '⟳', config_error: '⚠', deployment_changed: '✎',
                replica_started: '▶', replica_ready: '✔', replica_crashed: '✖', replica_restarted: '↻',
                health_check_failed: '✖', replica_stopped: '■', autoscale: '⇅', replicas_pending: '…',
                node_joined: '+', node_disconnected: '⚠', node_dead: '✖', node_alive: '●', node_removed: '−',
                node_launched: '+', node_draining: '■', node_deleted: '−', node_stopping: '■', replica_unresponsive: '✖'};
        const BAD_EVENTS = /crash|fail|dead|error|disconnect|unresponsive/;

        function subjectLink(s) {
                if (!s)
                        return '';
                const slash = s.indexOf('/');
                if (slash > 0)
                        return link(s, 'deployment', s.slice(0, slash), s.slice(slash + 1));
                if (findApp(s))
                        return link(s, 'app', s);
                if (nodeById(s))
                        return link(s, 'node', s);
                return s;
        }

        function eventItem(e, full) {
                return h('li', {class: BAD_EVENTS.test(e.kind) ? 'event bad' : 'event', dataset: {kind: e.kind, id: e.id}},
                        h('time', {datetime: new Date(e.time * 1000).toISOString(), title: datetime(e.time)}, full ? datetime(e.time) : clock(e.time)),
                        h('span', {class: 'kind'}, h('span', {'aria-hidden': 'true'}, (EVENT_ICONS[e.kind] || '•') + ' '), e.kind),
                        h('span', {class: 'subject'}, subjectLink(e.subject), e.node && e.node !== e.subject ? ` on ${e.node}` : ''),
                        h('span', {class: 'message'}, e.message || ''));
        }

        function eventList(events, id, empty) {
                if (!events.length)
                        return h('ol', {id, class: 'events'}, h('li', {class: 'empty'}, empty));
                return h('ol', {id, class: 'events'}, events.map(e => eventItem(e, id === 'events-all')));
        }

        function panel(title, id, ...content) {
                return h('section', {class: 'panel', 'aria-labelledby': id + '-h'}, h('h2', {id: id + '-h'}, title), ...content);
        }

        // Latency lines: p50 solid, p99 dashed, one colour per key.
        function latencyLines(hist, scope, keys) {
                return [...charts.lines(hist, scope, 'p50_ms', keys, k => `${k} p50`),
                        ...charts.lines(hist, scope, 'p99_ms', keys, k => `${k} p99`).map(l => ({...l, dashed: true}))];
        }
        // Replica lines per deployment: running solid, target dashed, pending dotted (one colour).
        function replicaLines(hist, keys, withPending) {
                const out = [];
                for (const k of keys || Object.keys((hist.series.deployments) || {}).sort()) {
                        out.push(...charts.lines(hist, 'deployments', 'replicas_running', [k], x => `${x} running`));
                        out.push(...charts.lines(hist, 'deployments', 'replicas_target', [k], x => `${x} target`).map(l => ({...l, dashed: true})));
                        if (withPending)
                                out.push(...charts.lines(hist, 'deployments', 'replicas_pending', [k], x => `${x} pending`).map(l => ({...l, dotted: true})));
                }
                return out;
        }

        // drawAll(root, specs): specs = {chartName: () => [lines, unit]} for the boxes under root.
        function drawAll(root, specs) {
                const hist = state.history;
                for (const section of root.querySelectorAll('section.chart')) {
                        const spec = specs[section.dataset.chart];
                        if (!spec)
                                continue;
                        if (!hist) {
                                fill(section.querySelector('.plot'), h('p', {class: 'nodata'},
                                        state.missing.history ? 'this head keeps no history' : 'no data yet'));
                                continue;
                        }
                        const [lines, unit] = spec(hist);
                        charts.draw(section, hist.t, lines, unit);
                }
        }

        function chartGrid(list) {
                return h('div', {class: 'charts'}, list.map(([name, title]) => charts.box(name, title)));
        }

        // ---- pages: mount() builds the skeleton once, update() refreshes it after each poll -----
        const overview = {
                mount(el) {
                        fill(el,
                                h('div', {class: 'row row-nodes'},
                                        panel('Applications', 'apps-panel', h('div', {id: 'apps-box'})),
                                        panel('Nodes', 'nodes-panel', h('div', {id: 'nodes-box'}))),
                                panel('Deployments', 'deps-panel', h('div', {id: 'deployments-box'})),
                                h('div', {class: 'row row-wide'},
                                        panel('Traffic, replicas and nodes', 'charts-panel', chartGrid([
                                                ['requests', 'Requests/s per application'],
                                                ['errors', 'Errors/s per application'],
                                                ['latency', 'Latency p50 / p99 (dashed) per application'],
                                                ['replicas', 'Replicas per deployment: running / target (dashed)'],
                                                ['nodes', 'Alive nodes per group'],
                                                ['cpu', 'CPU cores used per node'],
                                                ['rqdelay', 'Run-queue delay per node'],
                                        ])),
                                        panel('Recent events', 'events-panel', h('div', {id: 'events-box'}),
                                                h('p', null, h('a', {href: '#/events', id: 'all-events'}, 'All events →')))),
                                h('section', {class: 'panel', id: 'more-panel', hidden: true, 'aria-label': 'More metrics'},
                                        h('h2', null, 'More'), h('div', {class: 'charts', id: 'more-charts'})));
                },
                update(el) {
                        const apps = appList();
                        fill(el.querySelector('#apps-box'), table(['application', 'route', 'status', 'deployments', 'deployed'],
                                apps.map(a => ({attrs: {dataset: {app: a.name}}, cells: [link(a.name, 'app', a.name),
                                        a.route_prefix ?? '—', badge(a.status), {cell: String(depList(a).length), attrs: {class: 'n'}},
                                        {cell: clock(a.last_deployed_time_s), attrs: {title: datetime(a.last_deployed_time_s)}}]})),
                                {id: 'apps', class: 'grid'}, 'no applications are deployed'));
                        fill(el.querySelector('#nodes-box'), nodesTable(state.nodes || [], 'nodes'));
                        fill(el.querySelector('#deployments-box'), deploymentsTable(apps, 'deployments'));
                        fill(el.querySelector('#events-box'), eventList(state.events.slice(-12).reverse(), 'events',
                                state.missing.events ? 'this head keeps no events' : 'no events yet'));
                        drawAll(el, {
                                requests: hs => [charts.lines(hs, 'applications', 'requests_per_s'), 'req/s'],
                                errors: hs => [charts.lines(hs, 'applications', 'errors_per_s'), 'errors/s'],
                                latency: hs => [latencyLines(hs, 'applications'), 'ms'],
                                replicas: hs => [replicaLines(hs), 'replicas'],
                                nodes: hs => [charts.lines(hs, 'groups', 'nodes_alive'), 'nodes'],
                                cpu: hs => [charts.lines(hs, 'nodes', 'cpu_cores'), 'cores'],
                                rqdelay: hs => [charts.lines(hs, 'nodes', 'rq_delay_ms'), 'ms'],
                        });
                        const more = el.querySelector('#more-charts');
                        if (state.history)
                                charts.more(state.history, more);
                        el.querySelector('#more-panel').hidden = more.hidden !== false || !more.children.length;
                },
        };

        const eventsPage = {
                mount(el) {
                        fill(el, panel('Events', 'events-page',
                                h('form', {class: 'filters', role: 'search', onsubmit: e => e.preventDefault()},
                                        h('label', null, 'Kind ', h('select', {id: 'event-kind', onchange: () => eventsPage.update(el)},
                                                h('option', {value: ''}, 'all kinds'))),
                                        h('label', null, 'Subject or text ', h('input', {type: 'search', id: 'event-text',
                                                placeholder: 'e.g. echo/Echo or node-1', oninput: () => eventsPage.update(el)})),
                                        h('span', {id: 'event-count', role: 'status'})),
                                h('div', {id: 'events-all-box'})));
                },
                update(el) {
                        const select = el.querySelector('#event-kind');
                        const kinds = [...new Set(state.events.map(e => e.kind))].sort();
                        const have = [...select.options].map(o => o.value).slice(1);
                        if (JSON.stringify(have) !== JSON.stringify(kinds)) {
                                const chosen = select.value;
                                fill(select, h('option', {value: ''}, 'all kinds'), kinds.map(k => h('option', {value: k}, k)));
                                select.value = kinds.includes(chosen) ? chosen : '';
                        }
                        const kind = select.value, text = el.querySelector('#event-text').value.trim().toLowerCase();
                        const shown = state.events.filter(e => (!kind || e.kind === kind) && (!text ||
                                `${e.subject || ''} ${e.node || ''} ${e.message || ''} ${e.kind}`.toLowerCase().includes(text))).reverse();
                        fill(el.querySelector('#event-count'), `${shown.length} of ${state.events.length} events, newest first`);
                        fill(el.querySelector('#events-all-box'), eventList(shown, 'events-all',
                                state.missing.events ? 'this head keeps no events' : 'no matching events'));
                },
        };

        function appPage(name) {
                const keys = () => depList(findApp(name) || {}).map(d => `${name}/${d.name}`);
                return {
                        mount(el) {
                                fill(el, h('div', {class: 'title-row'}, h('h2', null, 'Application ', h('code', null, name)),
                                        h('span', {id: 'app-status'}),
                                        h('button', {type: 'button', id: 'shutdown-button', class: 'danger', dataset: {app: name},
                                                onclick: () => shutDown(name)}, '■ Shut down')),
                                        h('p', {id: 'app-summary'}),
                                        panel('Deployments', 'app-deps', h('div', {id: 'app-deployments-box'})),
                                        panel('Charts', 'app-charts', chartGrid([
                                                ['requests', 'Requests/s'], ['errors', 'Errors/s'],
                                                ['latency', 'Latency p50 / p99 (dashed)'],
                                                ['replicas', 'Replicas: running / target (dashed)']])),
                                        panel('Config as applied', 'app-config-panel', h('pre', {id: 'app-config'})));
                        },
                        update(el) {
                                const a = findApp(name);
                                fill(el.querySelector('#app-status'), a ? badge(a.status) : badge('GONE'));
                                el.querySelector('#shutdown-button').disabled = !a;
                                fill(el.querySelector('#app-summary'), a
                                        ? `route ${a.route_prefix ?? '— (not reachable over HTTP)'} · deployed ${datetime(a.last_deployed_time_s)}`
                                        : 'No application of this name is deployed (it may have been shut down or removed from apps.yaml).');
                                fill(el.querySelector('#app-deployments-box'), deploymentsTable(a ? [a] : [], 'app-deployments'));
                                fill(el.querySelector('#app-config'), a && a.config ? JSON.stringify(a.config, null, 2) : '(not reported by the head)');
                                drawAll(el, {
                                        requests: hs => [charts.lines(hs, 'applications', 'requests_per_s', [name]), 'req/s'],
                                        errors: hs => [charts.lines(hs, 'applications', 'errors_per_s', [name]), 'errors/s'],
                                        latency: hs => [latencyLines(hs, 'applications', [name]), 'ms'],
                                        replicas: hs => [replicaLines(hs, keys()), 'replicas'],
                                });
                        },
                };
        }

        function deploymentPage(appName, depName) {
                const key = `${appName}/${depName}`;
                return {
                        mount(el) {
                                fill(el, h('div', {class: 'title-row'}, h('h2', null, 'Deployment ',
                                        link(appName, 'app', appName), ' / ', h('code', null, depName)), h('span', {id: 'dep-status'})),
                                        h('dl', {id: 'dep-summary', class: 'facts'}),
                                        panel('Replicas', 'dep-replicas', h('div', {id: 'replicas-box'})),
                                        panel('Charts', 'dep-charts', chartGrid([
                                                ['requests', 'Requests/s'], ['errors', 'Errors/s'],
                                                ['latency', 'Latency p50 / p99 (dashed)'],
                                                ['replicas', 'Replicas: running / target (dashed) / pending (dotted)']])));
                        },
                        update(el) {
                                const a = findApp(appName), d = a && (a.deployments || {})[depName];
                                fill(el.querySelector('#dep-status'), badge(d ? d.status : 'GONE'));
                                const facts = d ? [
                                        ['replicas running / target', `${d.running_replicas} / ${d.target_replicas}`],
                                        ['pending', pendingText(d)], ['version', d.version || '—'],
                                        ['scaling', autoscaleText(d)],
                                        ...(d.autoscaling ? [['last decision', `${d.autoscaling.last_decision || '—'}` +
                                                (d.autoscaling.decided_at ? ` (${datetime(d.autoscaling.decided_at)})` : '')]] : []),
                                        ['message', d.message || '—']] : [['', 'No deployment of this name is deployed.']];
                                fill(el.querySelector('#dep-summary'), facts.map(([k, v]) => [h('dt', null, k), h('dd', null, v)]));
                                const reps = d ? d.replicas || [] : [];
                                fill(el.querySelector('#replicas-box'), table(
                                        ['replica', 'state', 'node', 'PID', 'started', 'restarts', 'ongoing', 'version'],
                                        reps.map(r => ({attrs: {dataset: {replica: r.replica_id}}, cells: [r.replica_id, badge(r.state),
                                                r.node_id ? link(r.node_id, 'node', r.node_id) : '—', {cell: num(r.pid), attrs: {class: 'n'}},
                                                datetime(r.start_time_s), {cell: num(r.restarts ?? null), attrs: {class: 'n', dataset: {test: 'restarts'}}},
                                                {cell: num(r.ongoing), attrs: {class: 'n'}}, r.version || '']})),
                                        {id: 'replicas', class: 'grid'}, 'no replicas'));
                                drawAll(el, {
                                        requests: hs => [charts.lines(hs, 'deployments', 'requests_per_s', [key]), 'req/s'],
                                        errors: hs => [charts.lines(hs, 'deployments', 'errors_per_s', [key]), 'errors/s'],
                                        latency: hs => [latencyLines(hs, 'deployments', [key]), 'ms'],
                                        replicas: hs => [replicaLines(hs, [key], true), 'replicas'],
                                });
                        },
                };
        }

        function nodePage(id) {
                return {
                        mount(el) {
                                fill(el, h('div', {class: 'title-row'}, h('h2', null, 'Node ', h('code', null, id)), h('span', {id: 'node-status'})),
                                        h('dl', {id: 'node-summary', class: 'facts'}),
                                        h('div', {class: 'row'},
                                                panel('Resources', 'node-res', h('div', {id: 'node-resources-box'})),
                                                panel('Labels', 'node-lab', h('div', {id: 'node-labels-box'}))),
                                        panel('Replicas on this node', 'node-reps', h('div', {id: 'node-replicas-box'})),
                                        panel('Charts', 'node-charts', chartGrid([['cpu', 'CPU cores used'], ['rqdelay', 'Run-queue delay']]),
                                                h('div', {class: 'charts', id: 'more-charts'})));
                        },
                        update(el) {
                                const n = nodeById(id);
                                fill(el.querySelector('#node-status'), badge(n ? n.state : 'GONE'));
                                fill(el.querySelector('#node-summary'), (n ? [['address', n.node_ip], ['group', n.group ?? 'default'],
                                        ['head node', n.is_head_node ? 'yes' : 'no'], ['connected', n.connected ? 'yes' : 'no'],
                                        ['heartbeat', ago(n.last_heartbeat_s_ago)], ['reports', num(n.reports)]]
                                        : [['', 'No node of this name has joined (or it was removed).']]).map(([k, v]) => [h('dt', null, k), h('dd', null, v)]));
                                const res = n ? Object.keys(n.resources_total || {}).sort() : [];
                                fill(el.querySelector('#node-resources-box'), table(['resource', 'used / total'],
                                        res.map(r => [r, {cell: used(n, r), attrs: {class: 'n'}}]), {id: 'node-resources', class: 'grid'}, 'none'));
                                const labels = n ? Object.entries(n.labels || {}).sort() : [];
                                fill(el.querySelector('#node-labels-box'), table(['label', 'value'], labels, {id: 'node-labels', class: 'grid'}, 'no labels'));
                                const reps = [];
                                for (const a of appList())
                                        for (const d of depList(a))
                                                for (const r of d.replicas || [])
                                                        if (r.node_id === id)
                                                                reps.push([r.replica_id, link(`${a.name}/${d.name}`, 'deployment', a.name, d.name),
                                                                        badge(r.state), {cell: num(r.pid), attrs: {class: 'n'}}, datetime(r.start_time_s),
                                                                        {cell: num(r.restarts ?? null), attrs: {class: 'n'}}]);
                                fill(el.querySelector('#node-replicas-box'), table(['replica', 'deployment', 'state', 'PID', 'started', 'restarts'],
                                        reps, {id: 'node-replicas', class: 'grid'}, 'no replicas run here'));
                                drawAll(el, {
                                        cpu: hs => [charts.lines(hs, 'nodes', 'cpu_cores', [id]), 'cores'],
                                        rqdelay: hs => [charts.lines(hs, 'nodes', 'rq_delay_ms', [id]), 'ms'],
                                });
                                if (state.history)
                                        charts.more(state.history, el.querySelector('#more-charts'), (scope, key) => scope === 'nodes' && key === id);
                        },
                };
        }

        // ---- routing ----------------------------------------------------------------------------
        let page = null;
        function route_() {
                const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
                let nav = 'overview';
                if (parts[0] === 'events') {
                        page = eventsPage;
                        nav = 'events';
                } else if (parts[0] === 'app' && parts.length === 2)
                        page = appPage(parts[1]);
                else if (parts[0] === 'deployment' && parts.length === 3)
                        page = deploymentPage(parts[1], parts[2]);
                else if (parts[0] === 'node' && parts.length === 2)
                        page = nodePage(parts[1]);
                else
                        page = overview;
                for (const a of document.querySelectorAll('[data-nav]'))
                        a.toggleAttribute('aria-current', a.dataset.nav === nav);
                const view = document.getElementById('view');
                view.dataset.page = parts[0] || 'overview';
                page.mount(view);
                document.title = `serve: ${parts.length ? parts.join(' / ') : 'overview'}`;
                render();
        }

        function render() {
                renderFrame();
                if (page && state.apps)
                        page.update(document.getElementById('view'));
        }

        // ---- actions: the token is asked once per tab, sent only in the Authorization header ----
        function say(text, ok) {
                const el = document.getElementById('action-status');
                el.hidden = false;
                el.dataset.state = ok ? 'ok' : 'error';
                fill(el, ok ? '✔ ' : '✖ ', text);
        }

        function askToken() {
                const dialog = document.getElementById('token-dialog'), input = document.getElementById('token-input');
                input.value = '';
                dialog.returnValue = '';
                return new Promise(resolve => {
                        dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok' ? input.value.trim() : null), {once: true});
                        dialog.showModal();
                        input.focus();
                });
        }

        // act(method, path, what): sends an authorized request; says what happened.
        async function act(method, path, what) {
                let token = sessionStorage.getItem(TOKEN_KEY);
                if (token === null) {
                        token = await askToken();
                        if (token === null) {
                                say(`${what}: cancelled`, false);
                                return false;
                        }
                }
                let r, body = {};
                try {
                        r = await fetch(path, {method, cache: 'no-store', headers: token ? {Authorization: `Bearer ${token}`} : {}});
                        body = await r.json().catch(() => ({}));
                } catch (e) {
                        say(`${what}: failed, head unreachable (${e.message})`, false);
                        return false;
                }
                if (r.status === 401) {
                        sessionStorage.removeItem(TOKEN_KEY);
                        say(`${what}: refused: missing or invalid API token`, false);
                        return false;
                }
                if (token)
                        sessionStorage.setItem(TOKEN_KEY, token);
                if (!r.ok) {
                        say(`${what}: failed (HTTP ${r.status}${body.error ? ': ' + body.error : ''})`, false);
                        return false;
                }
                say(`${what}: ${body.message || (r.status === 202 ? 'accepted' : 'done')}`, true);
                setTimeout(loop_once, 300);
                return true;
        }
        function loop_once() { poll().catch(e => console.error(e)); }

        function shutDown(app) {
                const a = findApp(app);
                if (!window.confirm(`Shut down application "${app}"? Its replicas stop and requests to ` +
                                    `${(a && a.route_prefix) || 'it'} fail until it is deployed again.`))
                        return;
                act('DELETE', `/api/serve/applications/${encodeURIComponent(app)}`, `shut down ${app}`);
        }

        document.getElementById('reload-button').addEventListener('click', () =>
                act('POST', '/api/serve/reload', 'reload apps.yaml'));
        window.addEventListener('hashchange', route_);
        route_();
        loop();
})(window.SD);
