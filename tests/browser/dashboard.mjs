// The dashboard in Chromium, against a running head and three workers (started by
// tests/integration/dashboard.sh, which passes their addresses in the environment). Prints one
// "ok - ..." or "not ok - ..." line per user-visible behaviour, "# ..." for notes. Every wait
// polls the page with a deadline; nothing sleeps in place of readiness.
import fs from 'node:fs';
import path from 'node:path';

const env = process.env;
const API = env.API, TOKEN = env.API_TOKEN, CONF = env.CONF, HEAD_PID = Number(env.HEAD_PID);
const WORKERS = env.WORKER_URLS.split(' ');
const SHOTS = env.SHOTS;
const WAIT = {timeout: 30000, polling: 250};
const {chromium} = await import(path.join(env.NODE_MODULES, 'playwright-core', 'index.mjs'));

function say(line) { process.stdout.write(line + '\n'); }
// step(WHAT, fn): one TAP line; fn returns an optional note or throws why it failed.
async function step(what, fn) {
        try {
                const note = await fn();
                say(`ok - ${what}${note ? ` (${note})` : ''}`);
                return true;
        } catch (e) {
                say(`not ok - ${what}: ${String(e.message || e).split('\n')[0]}`);
                return false;
        }
}
function expect(cond, why) { if (!cond) throw new Error(why); }
async function api(p) {
        const r = await fetch(API + p, {signal: AbortSignal.timeout(5000)});
        expect(r.ok, `${p}: HTTP ${r.status}`);
        return r.json();
}

// The applications under test. Line 8 is echo's num_replicas: the broken config puts a word there.
function writeApps(echoReplicas, broken) {
        const text = `proxy_location: EveryNode
applications:
  - name: echo
    route_prefix: /echo
    import_path: echo:app
    deployments:
      - name: Echo
        num_replicas: ${broken ? 'many' : echoReplicas}
        graceful_shutdown_timeout_s: 2
        ray_actor_options: {num_cpus: 0.25}
  - name: spare
    route_prefix: /spare
    import_path: echo:app
    deployments:
      - name: Echo
        num_replicas: 1
        ray_actor_options: {num_cpus: 0.25}
`;
        fs.writeFileSync(path.join(CONF, 'apps.yaml.new'), text);
        fs.renameSync(path.join(CONF, 'apps.yaml.new'), path.join(CONF, 'apps.yaml'));
}
function reloadHead() { process.kill(HEAD_PID, 'SIGHUP'); }

// Load: a few concurrent clients POSTing to every worker's proxy until stopped.
let loading = false, sent = 0, answered = 0;
async function client(url) {
        while (loading) {
                sent++;
                try {
                        const r = await fetch(url, {method: 'POST', body: 'hi', signal: AbortSignal.timeout(5000)});
                        await r.arrayBuffer();
                        if (r.ok)
                                answered++;
                } catch {
                        await new Promise(res => setTimeout(res, 50));
                }
        }
}
const clients = [];
function startLoad() {
        loading = true;
        for (const w of WORKERS)
                for (let i = 0; i < 2; i++)
                        clients.push(client(`${w}/echo`));
}
async function stopLoad() {
        loading = false;
        await Promise.all(clients);
}

const browser = await chromium.launch({executablePath: env.CHROMIUM,
        args: process.getuid && process.getuid() === 0 ? ['--no-sandbox'] : []});
const page = await browser.newPage({viewport: {width: 1280, height: 800}});
const pageErrors = [], urls = [], authHeaders = [];
page.on('pageerror', e => pageErrors.push(e.message));
page.on('request', r => {
        urls.push(r.url());
        if (r.headers().authorization)
                authHeaders.push(`${r.method()} ${new URL(r.url()).pathname}`);
});
let confirms = 0;
page.on('dialog', d => {
        confirms++;
        d.accept();
});
const shot = async name => {
        await page.screenshot({path: path.join(SHOTS, name)});
        say(`# screenshot ${path.join(SHOTS, name)}`);
};
const text = sel => page.locator(sel).innerText();
const lastEventId = () => page.evaluate(() => serveDashboard.events.reduce((m, e) => Math.max(m, e.id), 0));

try {
        await step('the dashboard page loads from the head (GET /)', async () => {
                const r = await page.goto(API + '/');
                expect(r.ok(), `HTTP ${r.status()}`);
                await page.waitForFunction(() => typeof Dygraph === 'function' && window.serveDashboard, null, WAIT);
                return `${await page.title()}`;
        });

        await step('the overview lists both applications as RUNNING', async () => {
                await page.waitForFunction(() => ['echo', 'spare'].every(a => {
                        const row = document.querySelector(`#apps tr[data-app="${a}"]`);
                        return row && row.innerText.includes('RUNNING');
                }), null, WAIT);
                return await text('#apps tr[data-app="echo"]');
        });

        await step('the overview lists the three nodes as ALIVE', async () => {
                await page.waitForFunction(() => {
                        const rows = [...document.querySelectorAll('#nodes tr[data-node]')];
                        return rows.length === 3 && rows.every(r => r.innerText.includes('ALIVE'));
                }, null, WAIT);
                return (await page.locator('#nodes tr[data-node] td:first-child').allInnerTexts()).join(', ');
        });

        await step('the deployments table shows echo/Echo with 2 of 2 replicas running', async () => {
                await page.waitForFunction(() => (document.querySelector('#deployments tr[data-deployment="echo/Echo"] [data-test=replicas]') || {}).innerText === '2 / 2', null, WAIT);
        });

        startLoad();
        await step('traffic makes the requests/s chart move (a value > 0 for echo)', async () => {
                await page.waitForFunction(() => {
                        const c = serveDashboard.charts.requests;
                        return c && c.values.echo && c.values.echo.filter(v => v > 0).length >= 3;
                }, null, WAIT);
                expect(await page.locator('[data-chart="requests"] canvas').count() > 0, 'no canvas in the requests chart');
                const legend = await text('[data-chart="requests"] .legend');
                expect(legend.includes('echo'), `the legend says '${legend}'`);
                const latest = await text('[data-chart="requests"] .latest');
                const m = /echo ([0-9.]+) req\/s/.exec(latest);
                expect(m && Number(m[1]) > 0, `the chart's latest values say '${latest}'`);
                return latest;
        });

        await step('the latency chart plots echo p50 and p99', async () => {
                await page.waitForFunction(() => {
                        const c = serveDashboard.charts.latency;
                        return c && c.latest['echo p50'] !== null && c.latest['echo p99'] !== null && c.latest['echo p99'] !== undefined;
                }, null, WAIT);
                return await text('[data-chart="latency"] .latest');
        });

        await step('the node charts plot CPU per node and alive nodes per group', async () => {
                await page.waitForFunction(() => {
                        const cpu = serveDashboard.charts.cpu, nodes = serveDashboard.charts.nodes;
                        return cpu && ['node-1', 'node-2', 'node-3'].every(n => cpu.labels.includes(n)) &&
                                nodes && nodes.latest.default === 3;
                }, null, WAIT);
                expect(await page.locator('[data-chart="cpu"] canvas').count() > 0, 'no canvas in the CPU chart');
                return await text('[data-chart="nodes"] .latest');
        });

        await page.waitForFunction(() => serveDashboard.charts.requests.values.echo.filter(v => v > 0).length >= 8, null, WAIT).catch(() => {});
        await shot('overview-under-load.png');

        await step('killing a replica shows a crash and a restart in the recent events', async () => {
                const before = await lastEventId();
                const apps = await api('/api/serve/applications/');
                const victim = apps.applications.echo.deployments.Echo.replicas.find(r => r.state === 'RUNNING');
                expect(victim, 'no RUNNING echo replica');
                process.kill(victim.pid, 'SIGKILL');
                say(`# killed replica ${victim.replica_id} (pid ${victim.pid} on ${victim.node_id})`);
                await page.waitForFunction(before => ['replica_crashed', 'replica_restarted'].every(k =>
                        [...document.querySelectorAll(`#events li[data-kind="${k}"]`)].some(li =>
                                Number(li.dataset.id) > before && li.innerText.includes('echo/Echo'))), before, WAIT);
                return (await text(`#events li[data-kind="replica_crashed"]`)).replace(/\s+/g, ' ');
        });

        await step('the deployment page counts the restart in its replicas table', async () => {
                await page.goto(API + '/#/deployment/echo/Echo');
                await page.waitForFunction(() => [...document.querySelectorAll('#replicas [data-test=restarts]')]
                        .some(td => Number(td.innerText) >= 1), null, WAIT);
                await page.waitForFunction(() => [...document.querySelectorAll('#replicas tr[data-replica]')]
                        .filter(tr => tr.innerText.includes('RUNNING')).length === 2, null, WAIT);
                await shot('deployment.png');
        });

        await step('the events page filters by kind', async () => {
                await page.goto(API + '/#/events');
                await page.waitForFunction(() => document.querySelector('#event-kind option[value="replica_crashed"]'), null, WAIT);
                await page.selectOption('#event-kind', 'replica_crashed');
                const kinds = await page.locator('#events-all li').evaluateAll(lis => lis.map(li => li.dataset.kind));
                expect(kinds.length >= 1 && kinds.every(k => k === 'replica_crashed'), `kinds shown: ${kinds}`);
                await page.selectOption('#event-kind', '');
                await page.fill('#event-text', 'node-');
                const shown = await page.locator('#events-all li').allInnerTexts();
                expect(shown.length >= 1 && shown.every(s => s.includes('node-')), `${shown.length} shown`);
                return `${kinds.length} crash(es)`;
        });

        await page.goto(API + '/#/');
        await step('a broken apps.yaml shows the error banner with its line and column (8:23, the word "many")', async () => {
                writeApps(2, true);
                reloadHead();
                await page.waitForFunction(() => {
                        const b = document.getElementById('config-error');
                        return !b.hidden && b.innerText.includes('apps.yaml:8:23:');
                }, null, WAIT);
                expect(await page.locator('#config-error').isVisible(), 'the banner is not visible');
                await shot('config-error.png');
                return (await text('#config-error-message'));
        });

        await step('a good apps.yaml clears the banner', async () => {
                writeApps(2);
                reloadHead();
                await page.waitForFunction(() => document.getElementById('config-error').hidden, null, WAIT);
        });

        await step('scaling num_replicas 2 -> 4 shows in the replicas chart (target and running reach 4)', async () => {
                writeApps(4);
                reloadHead();
                await page.waitForFunction(() => {
                        const c = serveDashboard.charts.replicas;
                        return c && c.latest['echo/Echo target'] === 4 && c.latest['echo/Echo running'] === 4;
                }, null, WAIT);
                const latest = await text('[data-chart="replicas"] .latest');
                expect(latest.includes('echo/Echo running 4') && latest.includes('echo/Echo target 4'), latest);
                const values = await page.evaluate(() => serveDashboard.charts.replicas.values['echo/Echo running']);
                expect(values.includes(2), 'the chart does not show the 2 replicas from before');
                await page.waitForFunction(() => (document.querySelector('#deployments tr[data-deployment="echo/Echo"] [data-test=replicas]') || {}).innerText === '4 / 4', null, WAIT);
                return latest;
        });
        // A few more points after the step, so the screenshot shows it (not a readiness wait).
        await page.waitForFunction(t => serveDashboard.history.t.length >= t + 4,
                await page.evaluate(() => serveDashboard.history.t.length), WAIT).catch(() => {});
        await shot('overview-scaled.png');

        // ---- actions and the token ----
        const dialogOpen = () => page.locator('#token-dialog').evaluate(d => d.open);
        await page.goto(API + '/#/app/spare');
        await page.waitForFunction(() => document.querySelector('#app-status').innerText.includes('RUNNING'), null, WAIT);

        await step('shut down without a token is refused, and the application still runs', async () => {
                await page.click('#shutdown-button');
                await page.waitForFunction(() => document.getElementById('token-dialog').open, null, WAIT);
                await page.click('#token-ok');
                await page.waitForFunction(() => document.getElementById('action-status').innerText.includes('refused: missing or invalid API token'), null, WAIT);
                const apps = await api('/api/serve/applications/');
                expect(apps.applications.spare, 'spare is gone');
                expect((await text('#app-status')).includes('RUNNING'), 'the page no longer shows spare RUNNING');
        });

        await step('shut down with a wrong token is refused, the token is not kept, the application still runs', async () => {
                await page.click('#shutdown-button');
                await page.waitForFunction(() => document.getElementById('token-dialog').open, null, WAIT);
                await page.fill('#token-input', 'wrong-token');
                await page.click('#token-ok');
                await page.waitForFunction(() => document.getElementById('action-status').innerText.includes('refused: missing or invalid API token'), null, WAIT);
                expect(await page.evaluate(() => sessionStorage.length) === 0, 'a token is still stored');
                const apps = await api('/api/serve/applications/');
                expect(apps.applications.spare, 'spare is gone');
        });

        await step('reload apps.yaml with the right token is accepted', async () => {
                await page.click('#reload-button');
                await page.waitForFunction(() => document.getElementById('token-dialog').open, null, WAIT);
                await page.fill('#token-input', TOKEN);
                await page.click('#token-ok');
                await page.waitForFunction(() => {
                        const s = document.getElementById('action-status');
                        return s.dataset.state === 'ok' && s.innerText.includes('reload apps.yaml');
                }, null, WAIT);
                return await text('#action-status');
        });

        await step('shut down with the token (asked once per tab) stops the application', async () => {
                await page.click('#shutdown-button');
                expect(!(await dialogOpen()), 'the token was asked again');
                await page.waitForFunction(() => {
                        const s = document.getElementById('action-status');
                        return s.dataset.state === 'ok' && s.innerText.includes('shut down spare');
                }, null, WAIT);
                const deadline = Date.now() + 30000;
                while ((await api('/api/serve/applications/')).applications.spare) {
                        expect(Date.now() < deadline, 'spare still listed after 30 s');
                        await new Promise(res => setTimeout(res, 250));
                }
                await page.waitForFunction(() => document.querySelector('#app-status').innerText.includes('GONE'), null, WAIT);
                expect(confirms === 3, `${confirms} confirmations asked for 3 shut downs`);
        });

        await step('the token travels only in the Authorization header, never in a URL', async () => {
                expect(!urls.some(u => u.includes(TOKEN)), 'a URL carries the token');
                expect(authHeaders.length >= 2, `authorized requests: ${authHeaders.join(', ')}`);
                return authHeaders.join(', ');
        });

        await page.goto(API + '/#/');
        await step('the overview no longer lists the shut-down application', async () => {
                await page.waitForFunction(() => document.querySelector('#apps tr[data-app="echo"]') &&
                        !document.querySelector('#apps tr[data-app="spare"]'), null, WAIT);
        });

        await step('a head that stops answering shows "head unreachable, retrying", and the page recovers', async () => {
                const t0 = await page.evaluate(() => serveDashboard.history.t.at(-1));
                process.kill(HEAD_PID, 'SIGSTOP');
                try {
                        await page.waitForFunction(() => {
                                const s = document.getElementById('conn-status');
                                return s.dataset.state === 'unreachable' && s.innerText.includes('head unreachable, retrying');
                        }, null, WAIT);
                        await shot('unreachable.png');
                } finally {
                        process.kill(HEAD_PID, 'SIGCONT');
                }
                await page.waitForFunction(t0 => document.getElementById('conn-status').dataset.state === 'ok' &&
                        serveDashboard.history.t.at(-1) > t0 + 2, t0, WAIT);
        });
        await stopLoad();
        say(`# load: ${sent} requests sent, ${answered} answered 2xx`);

        await step('no JavaScript errors on the page', async () => {
                expect(pageErrors.length === 0, pageErrors.join(' | '));
        });
} finally {
        loading = false;
        await browser.close();
}
