// Charts: the head's history series drawn with dygraphs. A chart is a <section data-chart=NAME>
// with a title, the plot, a legend and a line of the latest values (text, readable without the
// plot). What each chart plots is also kept on window.serveDashboard.charts[NAME].
'use strict';

(function (SD) {
        const {h, fill, num} = SD;

        // Metrics the pages chart by name; any other metric of any scope goes to "More".
        const KNOWN = {
                applications: ['requests_per_s', 'errors_per_s', 'p50_ms', 'p99_ms'],
                deployments: ['requests_per_s', 'errors_per_s', 'p50_ms', 'p99_ms',
                        'replicas_running', 'replicas_target', 'replicas_pending'],
                groups: ['nodes_alive'],
                nodes: ['cpu_cores', 'rq_delay_ms'],
        };
        const UNITS = {requests_per_s: 'req/s', errors_per_s: 'errors/s', p50_ms: 'ms', p99_ms: 'ms',
                rq_delay_ms: 'ms', cpu_cores: 'cores', nodes_alive: 'nodes'};
        function unitOf(metric) {
                if (UNITS[metric])
                        return UNITS[metric];
                const m = /_(ms|s|bytes|per_s|cores)$/.exec(metric);
                return m ? m[1].replace('_', '/') : '';
        }
        function titleOf(metric) { return metric.replace(/_per_s$/, '/s').replace(/_/g, ' '); }

        // Colours with at least 4.5:1 contrast on white; a line's key picks one, so that the
        // running and target lines of one deployment share a colour (target is dashed).
        const PALETTE = ['#1f5fa8', '#b3401a', '#2a7a2a', '#7a3fa0', '#8a6d00', '#0f7070', '#a8246a', '#555555'];

        const graphs = new WeakMap(); // section -> {graph, labelsKey}

        // box(name, title): an empty chart section for a view to place.
        function box(name, title) {
                const id = `chart-${name.replace(/[^A-Za-z0-9_-]/g, '_')}`;
                return h('section', {class: 'chart', dataset: {chart: name}, 'aria-labelledby': id + '-title'},
                        h('h3', {id: id + '-title'}, title),
                        h('div', {class: 'plot', role: 'img', 'aria-label': title}),
                        h('div', {class: 'legend'}),
                        h('p', {class: 'latest'}));
        }

        // 0.25, 12, 1.5k, 2M: axis labels without dygraphs' "250m" for a quarter.
        function short(v) {
                const a = Math.abs(v);
                if (a >= 1e6)
                        return `${+(v / 1e6).toPrecision(3)}M`;
                if (a >= 1e3)
                        return `${+(v / 1e3).toPrecision(3)}k`;
                return String(+v.toPrecision(3));
        }

        function lastValue(values) {
                for (let i = values.length - 1; i >= 0; i--)
                        if (values[i] !== null && values[i] !== undefined)
                                return values[i];
                return null;
        }

        // draw(section, t, lines, unit): lines = [{label, values (parallel to t), key, dashed, dotted}].
        function draw(section, t, lines, unit) {
                const name = section.dataset.chart;
                const plot = section.querySelector('.plot'), legend = section.querySelector('.legend');
                const latest = {};
                for (const l of lines)
                        latest[l.label] = lastValue(l.values);
                SD.state.charts[name] = {labels: lines.map(l => l.label), unit, latest,
                        points: t.length, values: Object.fromEntries(lines.map(l => [l.label, l.values]))};
                fill(section.querySelector('.latest'), lines.length
                        ? ['now: ', lines.map(l => `${l.label} ${num(latest[l.label], 1)}${unit ? ' ' + unit : ''}`).join(' · ')]
                        : '');
                const old = graphs.get(section);
                if (!lines.length || !t.length) {
                        if (old)
                                old.graph.destroy();
                        graphs.delete(section);
                        fill(plot, h('p', {class: 'nodata'}, 'no data yet'));
                        fill(legend);
                        return;
                }
                const rows = t.map((tt, i) => [new Date(tt * 1000), ...lines.map(l => l.values[i] ?? null)]);
                const labels = ['time', ...lines.map(l => l.label)];
                const labelsKey = JSON.stringify(labels) + JSON.stringify(lines.map(l => [l.key, l.dashed, l.dotted]));
                if (old && old.labelsKey === labelsKey) {
                        old.graph.updateOptions({file: rows});
                        return;
                }
                if (old)
                        old.graph.destroy();
                fill(plot);
                const keys = [...new Set(lines.map(l => l.key ?? l.label))];
                const series = {};
                for (const l of lines)
                        series[l.label] = {color: PALETTE[keys.indexOf(l.key ?? l.label) % PALETTE.length],
                                strokePattern: l.dotted ? Dygraph.DOTTED_LINE : l.dashed ? Dygraph.DASHED_LINE : null};
                const graph = new Dygraph(plot, rows, {
                        labels, series, ylabel: unit, legend: 'always', labelsDiv: legend, labelsSeparateLines: false,
                        includeZero: true, strokeWidth: 1.6, connectSeparatedPoints: false,
                        axes: {y: {axisLabelWidth: 44, axisLabelFormatter: short}}, xAxisHeight: 20, height: 150,
                });
                graphs.set(section, {graph, labelsKey});
        }

        // lines(history, scope, metric, keys, label): one line per key of a scope for one metric.
        function lines(history, scope, metric, keys, label) {
                const s = (history.series || {})[scope] || {};
                const out = [];
                for (const key of keys || Object.keys(s).sort()) {
                        const values = s[key] && s[key][metric];
                        if (values)
                                out.push({label: label ? label(key) : key, values, key});
                }
                return out;
        }

        // moreCharts(history, container, scopes): a chart per metric the pages do not know, per
        // scope (new scopes and metrics added by the head show up without a dashboard change).
        function more(history, container, keep) {
                const series = history.series || {};
                const wanted = [];
                for (const scope of Object.keys(series).sort()) {
                        const metrics = new Set();
                        for (const [key, m] of Object.entries(series[scope]))
                                if (!keep || keep(scope, key))
                                        Object.keys(m).forEach(x => metrics.add(x));
                        for (const metric of [...metrics].sort())
                                if (!(KNOWN[scope] || []).includes(metric))
                                        wanted.push([scope, metric]);
                }
                const boxes = new Map([...container.querySelectorAll('section.chart')].map(s => [s.dataset.chart, s]));
                for (const [scope, metric] of wanted) {
                        const name = `more:${scope}:${metric}`;
                        let section = boxes.get(name);
                        if (!section)
                                container.append(section = box(name, `${scope}: ${titleOf(metric)}`));
                        boxes.delete(name);
                        const keys = Object.keys(series[scope]).filter(k => !keep || keep(scope, k)).sort();
                        draw(section, history.t, lines(history, scope, metric, keys), unitOf(metric));
                }
                for (const stale of boxes.values())
                        stale.remove();
                container.hidden = wanted.length === 0;
        }

        SD.charts = {box, draw, lines, more, KNOWN};
})(window.SD);
