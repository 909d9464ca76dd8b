// DOM building and formatting. Everything the API says goes into text nodes or attributes set
// through the DOM, never through innerHTML, so an application named "<img onerror=...>" is text.
'use strict';
window.SD = window.SD || {};

(function (SD) {
        // h('a', {href: '#/', class: 'x', dataset: {test: 'y'}}, 'text', otherNode, [more]) -> element
        function h(tag, attrs, ...children) {
                const el = document.createElement(tag);
                for (const [k, v] of Object.entries(attrs || {})) {
                        if (v === null || v === undefined || v === false)
                                continue;
                        if (k === 'dataset')
                                Object.assign(el.dataset, v);
                        else if (k.startsWith('on'))
                                el.addEventListener(k.slice(2), v);
                        else if (k === 'class')
                                el.className = v;
                        else
                                el.setAttribute(k, v === true ? '' : String(v));
                }
                append(el, children);
                return el;
        }

        function append(el, children) {
                for (const c of children) {
                        if (c === null || c === undefined || c === false)
                                continue;
                        if (Array.isArray(c))
                                append(el, c);
                        else
                                el.append(c instanceof Node ? c : document.createTextNode(String(c)));
                }
        }

        // Replaces an element's children (keeps the element, so its place and ids stay stable).
        function fill(el, ...children) {
                el.replaceChildren();
                append(el, children);
                return el;
        }

        // table(columns, rows, attrs): columns = [header text...], rows = [[cell...]...]; a cell is
        // text, a node, or {cell: content, attrs} for a cell with attributes.
        function table(columns, rows, attrs, empty) {
                const body = rows.length ? rows.map(r => h('tr', r.attrs || null, (r.cells || r).map(c =>
                        c !== null && typeof c === 'object' && 'cell' in c ? h('td', c.attrs, c.cell) : h('td', null, c))))
                        : [h('tr', null, h('td', {colspan: columns.length, class: 'empty'}, empty || 'none'))];
                return h('table', attrs, h('thead', null, h('tr', null, columns.map(c => h('th', {scope: 'col'}, c)))),
                        h('tbody', null, body));
        }

        // A state shown by an icon and its word (never by colour alone); the class only adds colour.
        const STATES = {
                RUNNING: ['✔', 'good'], HEALTHY: ['✔', 'good'], ALIVE: ['●', 'good'],
                DEPLOYING: ['⟳', 'busy'], UPDATING: ['⟳', 'busy'], STARTING: ['⟳', 'busy'], PENDING_START: ['⟳', 'busy'],
                PENDING: ['…', 'busy'], STOPPING: ['■', 'busy'], DRAINING: ['■', 'busy'],
                UNHEALTHY: ['✖', 'bad'], DEAD: ['✖', 'bad'], FAILED: ['✖', 'bad'], DEPLOY_FAILED: ['✖', 'bad'],
        };
        function badge(state) {
                const s = String(state ?? 'UNKNOWN');
                const [icon, tone] = STATES[s] || ['?', 'neutral'];
                return h('span', {class: `badge ${tone}`, dataset: {state: s}}, h('span', {'aria-hidden': 'true'}, icon + ' '), s);
        }

        function pad(n) { return String(n).padStart(2, '0'); }
        // unix seconds -> "2024-05-01 12:34:56" (local time)
        function datetime(t) {
                if (!t)
                        return '—';
                const d = new Date(t * 1000);
                return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
        }
        function clock(t) {
                if (!t)
                        return '—';
                const d = new Date(t * 1000);
                return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
        }
        function ago(seconds) {
                if (seconds === null || seconds === undefined)
                        return '—';
                if (seconds < 1)
                        return 'just now';
                if (seconds < 120)
                        return `${Math.round(seconds)} s ago`;
                if (seconds < 7200)
                        return `${Math.round(seconds / 60)} min ago`;
                return `${Math.round(seconds / 3600)} h ago`;
        }
        function bytes(n) {
                if (n === null || n === undefined)
                        return '—';
                const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
                let i = 0;
                while (n >= 1024 && i < units.length - 1) {
                        n /= 1024;
                        i++;
                }
                return `${n >= 100 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
        }
        function num(n, digits) {
                if (n === null || n === undefined || Number.isNaN(n))
                        return '—';
                return Number.isInteger(n) ? String(n) : n.toFixed(digits ?? 2);
        }

        // Route links: every path segment is encoded, so names with '/' or '#' stay one segment.
        function route(...parts) { return '#/' + parts.map(encodeURIComponent).join('/'); }
        function link(text, ...parts) { return h('a', {href: route(...parts)}, text); }

        Object.assign(SD, {h, fill, table, badge, datetime, clock, ago, bytes, num, route, link});
})(window.SD);
